"""Seconds per epoch of the train stage at two or more git revisions, on this machine, alternating.

    python benchmarks/bench_revisions.py --archive /tmp/cifar-mini/cifar-10-binary.tar.gz \
        --sha256 H --revisions 312efcd HEAD --name cpu-epoch-revisions

Answers "is any epoch slower than it was at revision R?" with the real stages: each revision is
checked out in its own git worktree (a temporary folder, removed afterwards), downloads and
prepares the archive with its own code, then every configuration trains once per revision per
round, the revisions in turn (in reversed order every other configuration and round), so a drift
in the machine's speed hits them alike. Epoch seconds come from each run's
`metrics/train_log.tsv`; the first epoch of a run (compilation, first allocations) is reported
apart. Each revision keeps its own Inductor cache, warmed by its first round. Writes
results/<name>.json and results/<name>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_train import machine  # noqa: E402

from pipeline.hardware import cpu_class  # noqa: E402
from pipeline.plots import read_train_log  # noqa: E402

# Params overrides per configuration, on top of each revision's params.yaml; fp32 and an explicit
# compile setting, so every revision runs the same arithmetic whatever its `auto` would choose.
CONFIGURATIONS: dict[str, list[str]] = {
    "resnet18-w32-b256-compiled": [
        "model.width=32",
        "train.batch_size=256",
        "train.compile=true",
        "train.epochs=3",
    ],
    "tutorial-b128-eager": [
        "model.arch=tutorial",
        "train.batch_size=128",
        "train.compile=false",
        "train.epochs=4",
    ],
    "tutorial-b128-compiled": [
        "model.arch=tutorial",
        "train.batch_size=128",
        "train.compile=true",
        "train.epochs=4",
    ],
}
COMMON = ["preprocess.val_size=0", "train.device=cpu", "train.precision=fp32"]


def stage(checkout: Path, folder: Path, name: str, overrides: list[str]) -> None:
    """Run one stage of the revision checked out at `checkout`, in `folder`, with the revision's
    own Inductor cache beside its checkout."""
    cache = checkout.with_name(f"cache-{checkout.name}")
    environment = {**os.environ, "PYTHONPATH": str(checkout), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "stages", name]
    for override in overrides:
        command += ["-S", override]
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"{name} at {checkout.name} failed in {folder}: " + " | ".join(tail))


def measure(arguments: argparse.Namespace, scratch: Path, checkouts: dict[str, Path]) -> dict[str, Any]:
    data_overrides = [f"data.url={arguments.archive}", f"data.sha256={arguments.sha256}", *COMMON]
    for revision, checkout in checkouts.items():
        prepared = scratch / f"data-{checkout.name}"
        prepared.mkdir()
        shutil.copyfile(checkout / "params.yaml", prepared / "params.yaml")
        for name in ("download", "preprocess"):
            stage(checkout, prepared, name, data_overrides)
        print(f"{revision}: data prepared with its own code", flush=True)

    runs: list[dict[str, Any]] = []
    for round_number in range(1, arguments.rounds + 1):
        for index, (configuration, overrides) in enumerate(CONFIGURATIONS.items()):
            if configuration not in arguments.configurations:
                continue
            order = list(checkouts.items())
            for revision, checkout in order if (round_number + index) % 2 else order[::-1]:
                folder = scratch / f"run-{configuration}-{checkout.name}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                # the params the data was prepared with (a stage's -S values go into params.yaml)
                shutil.copyfile(scratch / f"data-{checkout.name}" / "params.yaml", folder / "params.yaml")
                (folder / "data").symlink_to(scratch / f"data-{checkout.name}" / "data")
                stage(checkout, folder, "train", data_overrides + overrides)
                seconds = read_train_log(folder / "metrics" / "train_log.tsv")["seconds"].tolist()
                runs.append(
                    {
                        "configuration": configuration,
                        "revision": revision,
                        "round": round_number,
                        "seconds": seconds,
                    }
                )
                print(f"round {round_number} {configuration} {revision}: {seconds}", flush=True)
    return {
        "machine": machine() | {"cpu_class": cpu_class()},
        "archive": arguments.archive,
        "revisions": {
            revision: checkout.name.removeprefix("checkout-") for revision, checkout in checkouts.items()
        },
        "common": COMMON,
        "configurations": {name: CONFIGURATIONS[name] for name in arguments.configurations},
        "runs": runs,
    }


def table(results: dict[str, Any]) -> str:
    """One row per configuration and revision: later epochs (all rounds) and each round's first."""
    lines = [
        "| configuration | revision | later epochs s (median) | min-max | epochs | first epoch s, by round |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for configuration in results["configurations"]:
        for revision, commit in results["revisions"].items():
            runs = [
                run
                for run in results["runs"]
                if run["configuration"] == configuration and run["revision"] == revision
            ]
            later = [second for run in runs for second in run["seconds"][1:]]
            first = " / ".join(f"{run['seconds'][0]:.1f}" for run in runs)
            median, low, high = (
                (f"{statistics.median(later):.2f}", f"{min(later):.1f}", f"{max(later):.1f}")
                if later
                else ("-", "-", "-")
            )
            name = revision if revision == commit else f"{revision} ({commit})"
            lines.append(f"| {configuration} | {name} | {median} | {low}-{high} | {len(later)} | {first} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--archive", required=True, help="path or URL of a CIFAR-10 binary archive (a mirror)"
    )
    parser.add_argument("--sha256", required=True, help="its SHA-256")
    parser.add_argument("--revisions", nargs="+", required=True, help="git revisions, at least two")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--configurations",
        nargs="+",
        default=list(CONFIGURATIONS),
        choices=list(CONFIGURATIONS),
        metavar="NAME",
    )
    parser.add_argument("--name", default="cpu-epoch-revisions", help="results/<name>.json and .md")
    arguments = parser.parse_args()
    if len(arguments.revisions) < 2:
        parser.error("--revisions needs two or more revisions to compare")
    with tempfile.TemporaryDirectory(prefix="bench-revisions-") as scratch:
        checkouts: dict[str, Path] = {}
        try:
            for revision in arguments.revisions:
                commit = subprocess.check_output(
                    ["git", "-C", str(REPO), "rev-parse", "--short", revision], text=True
                ).strip()
                checkouts[revision] = Path(scratch) / f"checkout-{commit}"
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(REPO),
                        "worktree",
                        "add",
                        "--detach",
                        "--quiet",
                        str(checkouts[revision]),
                        commit,
                    ],
                    check=True,
                )
            results = measure(arguments, Path(scratch), checkouts)
        finally:
            for checkout in checkouts.values():
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)], check=False
                )
    output = REPO / "benchmarks" / "results"
    (output / f"{arguments.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / f"{arguments.name}.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
