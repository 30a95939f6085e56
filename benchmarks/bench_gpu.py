"""The GPU benchmark in one command: data, the real stages per recipe, the step alone.

On a machine with one GPU, given a copy of the archive (its path and SHA-256) and, for a Python
without pydantic and ruamel.yaml and without a package index, a folder of their wheels:

    python3 benchmarks/bench_gpu.py --archive cifar-10-binary.tar.gz --sha256 HEX --wheels W --out OUT
    python3 benchmarks/bench_gpu.py --archive small.tar.gz --sha256 HEX --tiny --out /tmp/check --budget 900

(about 5.5 minutes on an H200; the second checks the script on a CPU, with a small archive in the
official layout).

It prepares the data (`preprocess.val_size=0`), then runs these parts, each
under `timeout`, in this order while its time budget (`--budget`, default 340 s) lasts:

- `default-cold`: the default recipe with an empty compile cache (the first epoch shows the
  compile time), then evaluate with TTA;
- `lease`: two short trainings started at once, each in its own workspace: on a one-GPU machine
  the second waits for the first's GPU lease, then both finish (`waited`, `lease_lines`);
- `step`: the step alone (ResNet-18 w64, batch 500, bf16, channels_last, fused SGD; 100 timed
  steps): eager, eager in a CUDA graph, compiled, compiled in a CUDA graph (the pipeline's own
  step), also at batch 1000, each compiled afresh with its setup time (warm-up steps: compilation,
  cuDNN's search, capture); the host's time to issue a step; scoring 5,000 validation images;
  the per-epoch augmentation of 50,000;
- each of `FAST_RECIPES`, train then evaluate (with the seconds the capture took, from the log);
  every recipe also records Dynamo's and Inductor's timestamped step lines (`compile_steps`:
  tracing, AOT autograd, Inductor's forward and backward graphs), where its first epoch goes;
- `no-graphs`: the default recipe for 6 epochs with `train.cuda_graphs=false`;
- `torchrun`: a plain run against `torchrun --standalone --nproc-per-node 1` (3 epochs, eager,
  `--torchrun-repeats` times each);
- `default-warm`: the default recipe again with a warm cache, seed 1.

`--parts a,b` runs only those, in the order given. Results go to OUT/gpu.json and the logs to
OUT/logs.tar.gz after every part, so a run stopped at its limit keeps what it measured. `--tiny`
runs every part on the CPU with width 4 and 1,000 images, to check the script itself. Record a GPU
run's gpu.json in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASE_PARAMS = "params.data.yaml"  # the stage folder's params once the data is prepared

# Fast recipes: overrides of params.yaml, the mirror and preprocess.val_size=0 added to each. Measured
# on an H200 (benchmarks/results/gpu-h200.json): no cutout and label smoothing 0.2 reach the
# official-94% level of the mirror (90.6% with TTA) in 20-22 epochs instead of 26. The `-alternate`
# ones add airbench's alternating flip (train.augment.flip=alternate), `-b1000` batch 1000, `-b250`
# batch 250, `-eager` no torch.compile (the step still captured: no compile time in the first
# epoch, slower later ones), `-heuristic-cudnn` cuDNN's heuristics instead of timing its algorithms
# in the first steps, `-muon` Muon for the convolution filters, `-nowarmup` the learning rate
# falling from its peak at the first step; none measured on a GPU yet.
FAST = ["train.label_smoothing=0.2", "train.augment.cutout=0"]
FAST_ALTERNATE = [*FAST, "train.augment.flip=alternate"]
FAST_17_ALTERNATE = ["train.epochs=17", *FAST_ALTERNATE]
FAST_MUON_ALTERNATE = [*FAST_ALTERNATE, "train.optimizer=muon"]
BATCH_1000 = ["train.batch_size=1000", "train.lr=0.4"]  # the SGD part's peak lr scaled with the batch
FAST_RECIPES: dict[str, list[str]] = {
    "fast-22": ["train.epochs=22", *FAST],
    "fast-20": ["train.epochs=20", *FAST],
    "fast-20-alternate": ["train.epochs=20", *FAST_ALTERNATE],
    "fast-17-alternate": FAST_17_ALTERNATE,
    # half the steps, each twice the images: the peak lr scaled with the batch (0.2 per 500)
    "fast-17-b1000-alternate": [*FAST_17_ALTERNATE, *BATCH_1000],
    # twice the steps, each half the images: the peak lr scaled with the batch
    "fast-17-b250-alternate": [*FAST_17_ALTERNATE, "train.batch_size=250", "train.lr=0.1"],
    "fast-17-heuristic-cudnn-alternate": [*FAST_17_ALTERNATE, "train.cudnn_benchmark=false"],
    "fast-17-eager-alternate": [*FAST_17_ALTERNATE, "train.compile=false"],
    # Muon for the filters (pipeline/muon.py; params.yaml's train.muon_lr and muon_momentum). On the
    # CPU proxy 6 epochs of Muon tied 10 of SGD (results/cpu-muon.md); SGD needed 20-22 on the H200.
    "fast-17-muon-alternate": [*FAST_17_ALTERNATE, "train.optimizer=muon"],
    "fast-14-muon-alternate": ["train.epochs=14", *FAST_MUON_ALTERNATE],
    "fast-12-muon-alternate": ["train.epochs=12", *FAST_MUON_ALTERNATE],
    "fast-10-muon-alternate": ["train.epochs=10", *FAST_MUON_ALTERNATE],
    # Muon kept its accuracy at batch 1000 on the CPU proxy (SGD lost a point there): half the
    # Newton-Schulz work per epoch, and larger steps. The first run at batch 1000 compiles cold.
    "fast-12-muon-b1000-alternate": ["train.epochs=12", *FAST_MUON_ALTERNATE, *BATCH_1000],
    "fast-10-muon-b1000-alternate": ["train.epochs=10", *FAST_MUON_ALTERNATE, *BATCH_1000],
    # No warm-up (airbench94_muon's schedule: straight down from the peak): on the CPU proxy 6
    # epochs of Muon gained 0.77 points over the 20% warm-up (results/cpu-muon.md).
    "fast-12-muon-nowarmup-alternate": ["train.epochs=12", *FAST_MUON_ALTERNATE, "train.warmup=0"],
    "fast-10-muon-nowarmup-alternate": ["train.epochs=10", *FAST_MUON_ALTERNATE, "train.warmup=0"],
}


def recipe_estimate(overrides: list[str]) -> float:
    """Seconds a fast recipe takes on the H200, train and evaluate: 30 with the batch size whose
    graph the default run compiled; 40 at another one, whose first run compiles it cold (the first
    epoch took 27 s cold against 4-5 s warm)."""
    return 40 if any(override.startswith("train.batch_size=") for override in overrides) else 30


TINY = [
    "model.width=4",
    "train.epochs=2",
    "train.batch_size=50",
    "train.val_batch_size=50",
    "train.device=cpu",
    "evaluate.device=cpu",
    "evaluate.batch_size=100",
]


class Bench:
    def __init__(self, out: Path, budget: float, tiny: bool) -> None:
        self.out, self.budget, self.tiny = out, budget, tiny
        self.started = time.monotonic()
        self.work = Path(os.environ.get("BENCH_WORK", "/tmp/cifar10-bench"))
        self.results: dict[str, Any] = {"parts": {}, "skipped": [], "timeline": []}
        self.environment = dict(os.environ)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.results["timeline"].append(line)

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def save(self) -> None:
        """OUT/gpu.json and OUT/logs.tar.gz (one file: the device tool brings back only a few)."""
        self.out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.results, indent=2)
        (self.out / "gpu.json.tmp").write_text(text)
        os.replace(self.out / "gpu.json.tmp", self.out / "gpu.json")
        with tarfile.open(self.out / "logs.tar.gz.tmp", "w:gz") as archive:
            archive.add(self.logs, arcname="logs")
        os.replace(self.out / "logs.tar.gz.tmp", self.out / "logs.tar.gz")

    def run(
        self, name: str, command: list[str], limit: float, cwd: Path, extra_env: dict[str, str] | None = None
    ) -> int:
        """Run `command` under `timeout`, its output in logs/NAME.log; returns the exit code."""
        limit = max(5.0, min(limit, self.left()))
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            completed = subprocess.run(
                ["timeout", f"{limit:.0f}", *command],
                cwd=cwd,
                env=self.environment | (extra_env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return completed.returncode


def install_packages(bench: Bench, wheels: Path | None) -> None:
    """The stages need pydantic and ruamel.yaml: installed from `wheels` into the work folder when
    this Python lacks them."""
    try:
        import pydantic  # noqa: F401
        import ruamel.yaml  # noqa: F401

        site = None
    except ImportError:
        if wheels is None:
            raise SystemExit(
                "this Python lacks pydantic or ruamel.yaml: give --wheels with their wheels"
            ) from None
        site = bench.work / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--upgrade",
                "--target",
                str(site),
                *sorted(str(path) for path in wheels.glob("*.whl")),
            ],
            check=True,
        )
    paths = [str(REPO)] + ([str(site)] if site else []) + [bench.environment.get("PYTHONPATH", "")]
    bench.environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    bench.environment["PYTHONUNBUFFERED"] = "1"
    # one compile cache for the whole run, empty at the start: the first compile is a cold one
    bench.environment["TORCHINDUCTOR_CACHE_DIR"] = str(bench.work / "inductor")
    bench.environment["TRITON_CACHE_DIR"] = str(bench.work / "triton")


def prepare_data(bench: Bench, archive: Path, sha256: str) -> list[str]:
    """Download (copy) and preprocess the archive in the work folder; return the data overrides."""
    stage = bench.work / "stage"
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", stage / "params.yaml")
    data = [
        f"data.url={archive.resolve()}",
        f"data.sha256={sha256}",
        "preprocess.val_size=0",
        "train.checkpoint_every=0",
    ]
    for name in ("download", "preprocess"):
        code = bench.run("data", stage_command(name, data), 120, stage)
        if code:
            bench.save()
            raise SystemExit(
                f"{name} failed with exit code {code}; see logs/data.log in {bench.out}/logs.tar.gz"
            )
    # a stage's -S values go into params.yaml: each recipe starts from the params of the data
    shutil.copy(stage / "params.yaml", stage / BASE_PARAMS)
    return data


def stage_command(stage: str, overrides: list[str], launcher: list[str] | None = None) -> list[str]:
    return [*(launcher or [sys.executable]), "-m", "stages", stage, *(f"--set={item}" for item in overrides)]


def read_run(stage: Path) -> dict[str, Any]:
    details = stage / "reports" / "train.json"  # written by the train stage at the end
    train = json.loads(details.read_text()) if details.exists() else {}
    if "train_seconds" not in train:  # an earlier version kept these in metrics/train.json
        train = json.loads((stage / "metrics" / "train.json").read_text())
    with (stage / "metrics" / "train_log.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    seconds = [float(row["seconds"]) for row in rows]
    result: dict[str, Any] = {
        "train_seconds": train["train_seconds"],
        "first_epoch_seconds": seconds[0],
        "steady_epoch_seconds": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "epoch_seconds": seconds,
        "train_accuracy_by_epoch": [float(row["train_acc"]) for row in rows],
        "train_loss": train.get("train_loss"),
    }
    evaluation = stage / "metrics" / "eval.json"
    if evaluation.exists():
        metrics = json.loads(evaluation.read_text())
        result |= {"test_accuracy": metrics["accuracy"], "tta_accuracy": metrics.get("tta_accuracy")}
    return result


# Dynamo's and Inductor's step lines (INFO, timestamped): where a first epoch's compilation goes.
COMPILE_STEP_LOGS = {"TORCH_LOGS": "dynamo,inductor"}
COMPILE_STEP = re.compile(
    r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*Step \d: (torchdynamo (?:start|done) tracing \w+"
    r"|(?:calling|done) compiler function \w+|torchinductor (?:done )?compiling \w+ graph \d+)"
)


def compile_steps(log: str) -> list[list[Any]]:
    """[seconds since the first step line, step] for each of Dynamo's and Inductor's step lines:
    tracing, AOT autograd, and Inductor's forward and (at the first backward) backward graphs."""
    steps: list[list[Any]] = []
    for line in log.splitlines():
        if match := COMPILE_STEP.match(line):
            hours, minutes, seconds, text = match.groups()
            clock = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            steps.append([clock, text])
    start = steps[0][0] if steps else 0.0
    return [[round((clock - start) % 86400, 3), text] for clock, text in steps]


def recipe(
    bench: Bench,
    name: str,
    overrides: list[str],
    estimate: float,
    *,
    evaluate: bool = True,
    launcher: list[str] | None = None,
) -> None:
    """The real train (and evaluate) stages with `overrides`, in the prepared work folder."""
    if bench.left() < estimate:
        bench.results["skipped"].append(name)
        bench.note(f"{name}: skipped, {bench.left():.0f} s left")
        return
    stage = bench.work / "stage"
    shutil.rmtree(stage / "metrics", ignore_errors=True)
    shutil.rmtree(stage / "models", ignore_errors=True)
    shutil.copy(stage / BASE_PARAMS, stage / "params.yaml")  # no value of the recipe before
    started = time.monotonic()
    # --tiny on a 2-core CPU: a recipe run that finds no cached graph compiles cold in C++ (up to
    # 71 s for the compile alone, a Muon recipe run as the only part) before its two tiny epochs
    limit = estimate * 2 + (120 if bench.tiny else 0)
    code = bench.run(
        name, stage_command("train", overrides, launcher), limit, stage, extra_env=COMPILE_STEP_LOGS
    )
    wall = time.monotonic() - started
    entry: dict[str, Any] = {
        "overrides": overrides,
        "train_exit_code": code,
        "train_stage_wall_seconds": wall,
    }
    if code == 0 and evaluate:
        entry["evaluate_exit_code"] = bench.run(name, stage_command("evaluate", overrides), 90, stage)
    if (stage / "metrics" / "train.json").exists() and code == 0:
        entry |= read_run(stage)
    log = (bench.logs / f"{name}.log").read_text()
    entry["cuda_graphs_log"] = [line for line in log.splitlines() if "cuda_graphs" in line]
    entry["compile_steps"] = compile_steps(log)
    captured = re.search(r"step captured in ([\d.]+) s \(.*compilation included: ([\d.]+) s\)", log)
    if captured:  # how much of the first epoch went to compiling and capturing the step
        entry["capture_seconds"], entry["capture_warmup_seconds"] = map(float, captured.groups())
    bench.results["parts"][name] = entry
    bench.save()
    summary = {
        key: entry.get(key)
        for key in ("train_seconds", "steady_epoch_seconds", "test_accuracy", "tta_accuracy")
    }
    bench.note(f"{name}: exit {code}, {wall:.1f} s, {summary}")


def lease_part(bench: Bench, overrides: list[str], estimate: float) -> None:
    """Two short trainings started at once on a one-GPU machine, each in a workspace of its own:
    the second waits for the first's GPU lease (pipeline/gpu_lease.py), then both finish."""
    if bench.left() < estimate:
        bench.results["skipped"].append("lease")
        bench.note(f"lease: skipped, {bench.left():.0f} s left")
        return
    environment = bench.environment | {"CIFAR10_GPU_LEASES": str(bench.work / "leases")}
    started = time.monotonic()
    running = []
    for index in (1, 2):
        folder = bench.work / f"lease-{index}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        shutil.copy(bench.work / "stage" / BASE_PARAMS, folder / "params.yaml")
        (folder / "data").symlink_to(bench.work / "stage" / "data")
        log = (bench.logs / f"lease-{index}.log").open("w")
        limit = estimate * 2 + (120 if bench.tiny else 0)  # --tiny: a cold C++ compile, as for recipes
        command = ["timeout", f"{limit:.0f}", *stage_command("train", overrides)]
        running.append(
            (
                subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT),
                log,
            )
        )
    codes = []
    for process, log in running:
        codes.append(process.wait())
        log.close()
    texts = [(bench.logs / f"lease-{index}.log").read_text() for index in (1, 2)]
    bench.results["parts"]["lease"] = {
        "overrides": overrides,
        "exit_codes": codes,
        "wall_seconds": time.monotonic() - started,
        "waited": ["waiting for 1 to come free" in text for text in texts],
        "lease_lines": [
            [line for line in text.splitlines() if "leased" in line or "waiting" in line] for text in texts
        ],
    }
    bench.save()
    bench.note(f"lease: exit codes {codes}, {json.dumps(bench.results['parts']['lease']['lease_lines'])}")


def step_timings(bench: Bench, estimate: float) -> None:
    if bench.left() < estimate:
        bench.results["skipped"].append("step")
        return
    prepared = bench.work / "stage" / "data" / "prepared"
    output = bench.work / "step.json"
    command = [
        sys.executable,
        str(Path(__file__)),
        "--step-only",
        "--prepared",
        str(prepared),
        "--out",
        str(output),
    ]
    if bench.tiny:
        command.append("--tiny")
    # --tiny on a 2-core CPU: the compiled configurations' cold C++ compile alone takes 75-88 s
    code = bench.run("step", command, estimate * (3 if bench.tiny else 1.5), REPO)
    bench.results["parts"]["step"] = (
        json.loads(output.read_text()) if output.exists() else {"exit_code": code}
    )
    bench.save()
    bench.note(f"step: exit {code}, {json.dumps(bench.results['parts']['step'])[:600]}")


# ----------------------------------------------------------------------------- the step alone


def measure_steps(prepared: Path, out: Path, tiny: bool) -> None:
    """Milliseconds per training step of each configuration, in this process; written as it goes."""
    import torch

    from pipeline.augmentation import augment_epoch
    from pipeline.compile_cache import compile_model
    from pipeline.data import load_meta, load_split
    from pipeline.device import DeviceSplit, InputTransform, configure_device, place_model, resolve_device
    from pipeline.inference import evaluate
    from pipeline.model import build_model
    from pipeline.optimizer import build_optimizer
    from pipeline.params import load_params
    from pipeline.step import CudaGraphStep
    from pipeline.train_loop import build_train_step

    device = resolve_device("cpu" if tiny else "auto")
    configure_device(device, load_params(REPO / "params.yaml").train)  # as the train stage does
    width, steps, warmup = (4, 5, 2) if tiny else (64, 100, 5)
    results: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "width": width}

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def save() -> None:
        out.write_text(json.dumps(results, indent=2))

    meta = load_meta(prepared)
    split = load_split(prepared, "train", meta)
    assert split is not None
    data = DeviceSplit.from_split(split, device)
    transform = InputTransform.create(meta["mean"], meta["std"], True, device)

    def epoch_of(params: Any, epoch: int) -> Any:
        return augment_epoch(
            data.images,
            data.labels,
            params.augment,
            seed=0,
            epoch=epoch,
            steps=len(data) // params.batch_size,
            batch_size=params.batch_size,
        )

    for batch_size in (50,) if tiny else (500, 1000):
        params = load_params(REPO / "params.yaml", [f"train.batch_size={batch_size}"]).train
        if batch_size in (50, 500):
            synchronize()
            started = time.perf_counter()
            for epoch in range(3):
                epoch_of(params, epoch)
            synchronize()
            results["augment_epoch_ms"] = (time.perf_counter() - started) / 3 * 1000
            save()
        batches = epoch_of(params, 0)
        configurations = [
            ("eager", False, False),
            ("eager+graph", False, True),
            ("compiled", True, False),
            ("compiled+graph (the pipeline's step)", True, True),
        ]
        if batch_size == 1000:
            configurations = configurations[3:]
        for name, compiled, graphed in configurations:
            # Each configuration compiles as a fresh process would. Without this, a model compiled
            # for batch 500 earlier in this process makes Dynamo recompile batch 1000 with a
            # symbolic batch size ("automatic dynamic shapes": slower kernels than a run at 1000
            # gets), and a configuration reusing an earlier compile hides its setup time.
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = place_model(build_model("resnet18", width), device)
            runner = compile_model(model, device) if compiled else model
            step = build_train_step(
                runner,
                build_optimizer(model, params),
                transform,
                params,
                device=device,
                precision="bf16",
                total_steps=warmup + steps + 20,
                plain_model=model,
            )
            run = CudaGraphStep(step) if graphed and device.type == "cuda" else step
            synchronize()
            began = time.perf_counter()
            count = len(batches.labels) // batches.batch_size
            for index in range(warmup + steps):
                if index == warmup:
                    synchronize()
                    setup_seconds = time.perf_counter() - began
                    timed = time.perf_counter()
                step.learning_rate.set(index)
                run(*batches.batch(index % count))
            synchronize()
            milliseconds = (time.perf_counter() - timed) / steps * 1000
            issued = time.perf_counter()  # the host's time to issue steps, not waiting for the device
            for index in range(20):
                step.learning_rate.set(index)
                run(*batches.batch(index % count))
            host_milliseconds = (time.perf_counter() - issued) / 20 * 1000
            synchronize()
            key = f"batch {params.batch_size}: {name}"
            results[key] = {
                "ms_per_step": milliseconds,
                "host_ms_to_issue_a_step": host_milliseconds,  # near ms_per_step: the host is the limit
                "seconds_per_50000_images": milliseconds / 1000 * 50000 / params.batch_size,
                "setup_seconds": setup_seconds,  # the warm-up steps: compilation, cuDNN search, capture
                "captured": isinstance(run, CudaGraphStep) and run.graph is not None,
            }
            if key.endswith("(the pipeline's step)") and params.batch_size in (50, 500):
                validation = DeviceSplit(data.images[:5000], data.labels[:5000])
                for _ in range(2):  # the first pass finds cuDNN's algorithms
                    synchronize()
                    began = time.perf_counter()
                    evaluate(model, validation, transform, batch_size=500, precision="bf16")
                    synchronize()
                results["validation_5000_images_ms"] = (time.perf_counter() - began) * 1000
            save()
            del model, runner, step, run
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "host": platform.node()}
    if shutil.which("nvidia-smi"):
        query = "name,memory.total,clocks.max.sm,power.limit,driver_version"
        info["gpu"] = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    info["cpus"] = os.cpu_count()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and the logs")
    parser.add_argument("--archive", type=Path, required=True, help="a copy of the binary archive")
    parser.add_argument("--sha256", required=True, help="its SHA-256")
    parser.add_argument(
        "--wheels", type=Path, help="wheels of pydantic and ruamel.yaml, if Python lacks them"
    )
    parser.add_argument("--budget", type=float, default=340, help="seconds for all parts (default 340)")
    parser.add_argument("--tiny", action="store_true", help="check the script on the CPU with tiny settings")
    parser.add_argument(
        "--torchrun-repeats", type=int, default=1, help="plain and torchrun runs (default 1 each)"
    )
    parser.add_argument("--parts", help="comma-separated parts to run (default: all, in priority order)")
    parser.add_argument("--step-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_only:
        sys.path.insert(0, str(REPO))
        measure_steps(args.prepared, args.out, args.tiny)
        return

    bench = Bench(args.out, args.budget, args.tiny)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    bench.results["machine"] = machine()
    bench.results["tiny"] = args.tiny
    install_packages(bench, args.wheels)
    data = prepare_data(bench, args.archive, args.sha256)
    bench.note("data ready")
    tiny = TINY if args.tiny else []
    eager = [*data, "train.epochs=3", "train.compile=false", "train.cuda_graphs=false", *tiny]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]

    def plain_and_torchrun() -> None:
        for repeat in range(1, args.torchrun_repeats + 1):
            recipe(bench, f"plain-3-epochs-{repeat}", eager, 12, evaluate=False)
            recipe(
                bench, f"torchrun-1-process-3-epochs-{repeat}", eager, 15, evaluate=False, launcher=torchrun
            )

    # In priority order; estimates in seconds on the H200 (tiny CPU runs take about as long: compile).
    parts: dict[str, Callable[[], None]] = {
        "default-cold": lambda: recipe(bench, "default-cold-cache", [*data, *tiny], 70),
        "lease": lambda: lease_part(bench, [*data, "train.epochs=3", "model.width=16", *tiny], 40),
        "step": lambda: step_timings(bench, 75),
        **{
            name: functools.partial(
                recipe, bench, name, [*data, *overrides, *tiny], recipe_estimate(overrides)
            )
            for name, overrides in FAST_RECIPES.items()
        },
        "no-graphs": lambda: recipe(
            bench,
            "default-6-epochs-no-cuda-graphs",
            [*data, "train.epochs=6", "train.cuda_graphs=false", *tiny],
            20,
            evaluate=False,
        ),
        "torchrun": plain_and_torchrun,
        "default-warm": lambda: recipe(
            bench, "default-warm-cache-seed-1", [*data, "train.seed=1", *tiny], 35
        ),
    }
    chosen = args.parts.split(",") if args.parts else list(parts)
    unknown = sorted(set(chosen) - set(parts))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; known: {', '.join(parts)}")
    for name in chosen:  # the given order: a part run after another compiles with a warm cache
        parts[name]()
    bench.note("done")
    bench.save()


if __name__ == "__main__":
    main()
