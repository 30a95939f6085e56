"""Training speed of the pipeline against a plain PyTorch loop, peak memory, and time-to-accuracy runs.

    python benchmarks/bench_train.py --prepared data/prepared      # throughput table, ~10 min on 2 cores
    python benchmarks/bench_train.py --prepared data/prepared --archive A --sha256 H --time-to-accuracy cpu

Each throughput measurement runs in its own subprocess (so peak memory is its own) and the
plain loop and the pipeline run alternately in one invocation, so both see the same machine.
Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.compile_cache import compile_model  # noqa: E402
from pipeline.data import load_meta, load_split  # noqa: E402
from pipeline.device import DeviceSplit, InputTransform, place_model, resolve_precision  # noqa: E402
from pipeline.hardware import IsaClass  # noqa: E402
from pipeline.model import build_model  # noqa: E402
from pipeline.optimizer import build_optimizer  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.train_loop import EpochTotals, TrainSetup, build_train_step, train_one_epoch  # noqa: E402

# Recipes measured end to end with the real stages: params overrides on top of params.yaml.
RECIPES: dict[str, list[str]] = {
    # docs/performance.md, Time to accuracy on a CPU (results/cpu-recipe-2026-12-04.md)
    "cpu": [
        "preprocess.val_size=0",
        "model.width=32",
        "train.epochs=8",
        "train.batch_size=256",
        "train.optimizer=muon",
        "train.warmup=0",
        "train.label_smoothing=0.2",
        "train.augment.cutout=0",
        "train.augment.flip=alternate",
    ],
    # the CPU recipe before it (12 epochs of SGD; results/2026-12-04-performance-notes.md)
    "cpu-sgd-12": [
        "preprocess.val_size=0",
        "model.width=32",
        "train.epochs=12",
        "train.batch_size=256",
        "train.lr=0.2",
        "train.label_smoothing=0.2",
        "train.augment.cutout=0",
        "evaluate.tta_translate=true",
    ],
    # measured on an H200 by bench_gpu.py (docs/performance.md, On one GPU)
    "gpu-default": ["preprocess.val_size=0", "train.checkpoint_every=0"],
    "gpu-fast-22": [
        "preprocess.val_size=0",
        "train.epochs=22",
        "train.label_smoothing=0.2",
        "train.augment.cutout=0",
        "train.checkpoint_every=0",
    ],
}


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def plain_loop(arch: str, device: str, prepared: Path, batch: int, warmup: int, steps: int) -> dict[str, Any]:
    """The reference: torchvision transforms per image in a DataLoader, fp32 eager, as tutorials do it."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    meta = load_meta(prepared)
    split = load_split(prepared, "train", meta)
    assert split is not None
    pictures = split.images.transpose(0, 2, 3, 1)  # HWC for PIL
    split_labels = split.labels

    class Pictures(Dataset[tuple[torch.Tensor, int]]):
        def __init__(self) -> None:
            self.transform = transforms.Compose(
                [
                    transforms.RandomCrop(32, padding=4),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    transforms.Normalize(meta["mean"], meta["std"]),
                ]
            )

        def __len__(self) -> int:
            return len(pictures)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return self.transform(Image.fromarray(pictures[index])), int(split_labels[index])

    torch.manual_seed(0)
    model = build_model(arch, 64).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = DataLoader(Pictures(), batch_size=batch, shuffle=True, num_workers=2, drop_last=True)
    times = []
    model.train()
    for step, (images, labels) in enumerate(loader):
        images, labels = images.to(device), labels.to(device)
        loss = functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        if step + 1 == warmup + steps:
            break
    return {"images_per_second": steps * batch / (times[-1] - times[warmup - 1])}


def pipeline_loop(
    arch: str,
    device_name: str,
    prepared: Path,
    batch: int,
    warmup: int,
    steps: int,
    precision: str,
    compile: bool,
) -> dict[str, Any]:
    """The pipeline's own engine (train_one_epoch) on the whole split held on the device."""
    from pipeline.device import keep_freed_memory

    device = torch.device(device_name)
    if device.type == "cpu":
        keep_freed_memory()
    meta = load_meta(prepared)
    split = load_split(prepared, "train", meta)
    assert split is not None
    params = load_params(
        REPO / "params.yaml", [f"train.batch_size={batch}", f"train.precision={precision}"]
    ).train
    torch.manual_seed(0)
    model = place_model(build_model(arch, 64), device)
    runner = compile_model(model, device) if compile else model
    times: list[float] = []

    def advance(amount: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    transform = InputTransform.create(meta["mean"], meta["std"], True, device)
    resolved = resolve_precision(precision, device)
    setup = TrainSetup(
        step=build_train_step(
            runner,
            build_optimizer(model, params),
            transform,
            params,
            device=device,
            precision=resolved,
            total_steps=warmup + steps,
            plain_model=model,
        ),
        data=DeviceSplit.from_split(split, device),
        transform=transform,
        params=params,
        device=device,
        precision=resolved,
        steps_per_epoch=warmup + steps,  # a partial epoch is enough to time
    )
    started = time.perf_counter()
    train_one_epoch(setup, 0, EpochTotals(), advance=advance)
    result: dict[str, Any] = {
        "images_per_second": steps * batch / (times[-1] - times[warmup - 1]),
        "warmup_seconds": times[warmup - 1] - started,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# Environment that makes oneDNN and ATen use only the instructions of a weaker class of CPU.
EMULATION: dict[str, dict[str, str]] = {
    "native": {},
    "avx512-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


def measure_in_subprocess(config: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ | EMULATION[config.get("emulate", "native")],
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{config}: {completed.stderr[-2000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def use_routes(spec: str) -> None:
    """Replace this CPU class's convolution routes, in this process only (bench_routes.py): `spec`
    is the `pipeline.hardware.Routes` fields, comma-separated."""
    import dataclasses

    import pipeline.hardware as hardware

    isa = hardware.cpu_class()
    routes = hardware.Routes(*(int(value) for value in spec.split(",")))
    hardware.SETTINGS[isa] = dataclasses.replace(hardware.SETTINGS[isa], routes=routes)


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    prepared = Path(config["prepared"])
    if "routes" in config:
        use_routes(config["routes"])
    if config["loop"] == "plain":
        result = plain_loop(
            config["arch"], config["device"], prepared, config["batch"], config["warmup"], config["steps"]
        )
    else:
        result = pipeline_loop(
            config["arch"],
            config["device"],
            prepared,
            config["batch"],
            config["warmup"],
            config["steps"],
            config["precision"],
            config["compile"],
        )
    from pipeline.hardware import cpu_class

    return result | {
        "peak_rss_mb": peak_rss_mb() + peak_rss_mb(resource.RUSAGE_CHILDREN),
        "cpu_class": cpu_class(),
    }


def is_auto_row(row: dict[str, Any], isa: IsaClass | None) -> bool:
    """Whether `row` is the configuration the train stage's `auto` runs (precision and compile) for
    its arch and device, on a CPU of class `isa`."""
    from pipeline.compile_cache import should_compile

    device = torch.device(row["device"])
    isa = isa if device.type == "cpu" else None
    chosen = (resolve_precision("auto", device, isa), should_compile("auto", device, row["arch"], isa))
    return row["loop"] == "pipeline" and (row["precision"], row["compile"]) == chosen


def throughput(
    prepared: Path, devices: list[str], steps: dict[str, int], rounds: int, emulate: str = "native"
) -> list[dict[str, Any]]:
    """Each configuration measured `rounds` times, round robin, so a drift in the machine's speed hits
    all of them alike; a row reports the median. bf16 rows are left out on a class without bf16
    instructions (emulated bf16 takes about a minute a step there)."""
    from pipeline.hardware import NATIVE_BF16, cpu_class

    isa = cpu_class(environment=os.environ | EMULATION[emulate])
    rows = []
    for device in devices:
        for arch in ("resnet18", "tutorial"):
            base = {"arch": arch, "device": device, "prepared": str(prepared), "batch": 128, "warmup": 3}
            base["steps"] = steps[arch] if device == "cpu" else 100
            base["emulate"] = emulate
            precisions = ["fp32", "bf16"] if device != "cpu" or isa in NATIVE_BF16 else ["fp32"]
            configs = [base | {"loop": "plain", "precision": "fp32", "compile": False}] + [
                base | {"loop": "pipeline", "precision": precision, "compile": compiled}
                for precision in precisions
                for compiled in (False, True)
            ]
            measured: list[list[dict[str, Any]]] = [[] for _ in configs]
            failures: dict[int, str] = {}
            for _ in range(rounds):
                for index, (config, results) in enumerate(zip(configs, measured, strict=True)):
                    if index in failures:
                        continue
                    try:
                        results.append(measure_in_subprocess(config))
                    except RuntimeError as error:  # e.g. a NaN: recorded, and the others go on
                        failures[index] = str(error).strip().splitlines()[-1]
                        print(json.dumps(config | {"failed": failures[index]}), flush=True)
                        continue
                    print(json.dumps(config | results[-1]), flush=True)
            failed_rows = [
                configs[index] | {"failed": message, "cpu_class": isa, "speedup": 0.0, "auto": False}
                for index, message in failures.items()
            ]
            kept = [index for index in range(len(configs)) if index not in failures]
            configs, measured = [configs[index] for index in kept], [measured[index] for index in kept]
            summaries: list[dict[str, Any]] = []
            for config, results in zip(configs, measured, strict=True):
                speeds = [result["images_per_second"] for result in results]
                summaries.append(
                    config
                    | {
                        "images_per_second": float(np.median(speeds)),
                        "images_per_second_each_round": speeds,
                        "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
                        "cpu_class": results[0]["cpu_class"],
                    }
                )
            reference = summaries[0]["images_per_second"]
            for summary in summaries:
                summary["speedup"] = summary["images_per_second"] / reference
                summary["auto"] = is_auto_row(summary, isa)
            rows += summaries + failed_rows
    return rows


def time_to_accuracy(recipe: str, archive: Path, sha256: str, repeat: int) -> list[dict[str, Any]]:
    """Run the real stages (preprocess, train, evaluate) with a recipe in a scratch folder."""
    rows = []
    for attempt in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            shutil.copy(REPO / "params.yaml", folder / "params.yaml")
            overrides = [
                *RECIPES[recipe],
                f"data.url={archive}",
                f"data.sha256={sha256}",
                f"train.seed={attempt}",
            ]
            arguments = [f"--set={item}" for item in overrides]
            for stage in ("download", "preprocess", "train", "evaluate"):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "stages", stage, *arguments], cwd=folder, check=True)
                if stage == "train":
                    wall = time.perf_counter() - started
            train = json.loads((folder / "reports" / "train.json").read_text())  # timing and device
            evaluation = json.loads((folder / "metrics" / "eval.json").read_text())
            rows.append(
                {
                    "recipe": recipe,
                    "overrides": RECIPES[recipe],
                    "seed": attempt,
                    "train_seconds": train["train_seconds"],
                    "train_stage_wall_seconds": wall,
                    "images_per_second": train["images_per_second"],
                    "test_accuracy": evaluation["accuracy"],
                    "tta_accuracy": evaluation.get("tta_accuracy"),
                    "peak_rss_mb_of_stages": peak_rss_mb(resource.RUSAGE_CHILDREN),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def processes(archive: Path, sha256: str, counts: list[int]) -> list[dict[str, Any]]:
    """images/s of the real train stage with 1, 2, ... DistributedDataParallel processes on one machine."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copy(REPO / "params.yaml", folder / "params.yaml")
        common = [f"data.url={archive}", f"data.sha256={sha256}", "preprocess.val_size=0", "train.epochs=1"]
        common += ["model.width=32", "train.batch_size=256", "train.checkpoint_every=0"]
        for stage in ("download", "preprocess"):
            subprocess.run(
                [sys.executable, "-m", "stages", stage, *(f"--set={item}" for item in common)],
                cwd=folder,
                check=True,
            )
        for count in counts:
            arguments = [f"--set={item}" for item in (*common, f"train.nproc={count}")]
            subprocess.run([sys.executable, "-m", "stages", "train", *arguments], cwd=folder, check=True)
            train = json.loads((folder / "reports" / "train.json").read_text())  # timing and device
            rows.append(
                {
                    "processes": count,
                    "images_per_second": train["images_per_second"],
                    "device": train["device"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with Path("/proc/cpuinfo").open() as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}", ""]
    if results["throughput"]:
        lines += [
            "| class | arch | device | loop | precision | compile | images/s | vs plain fp32 | peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        for row in results["throughput"]:
            loop = row["loop"] + (" (the stage's `auto`)" if row.get("auto") else "")
            compiled = "yes" if row["compile"] else "no"
            start = f"| {row.get('cpu_class', '')} | {row['arch']} | {row['device']} | {loop} "
            start += f"| {row['precision']} | {compiled} "
            if "failed" in row:
                lines.append(start + f"| failed: {row['failed'][-60:]} | | |")
                continue
            lines.append(
                start
                + f"| {row['images_per_second']:.0f} | {row['speedup']:.2f} | {row['peak_rss_mb']:.0f} |"
            )
    if results["time_to_accuracy"]:
        lines += [
            "",
            "| recipe | seed | train s | images/s | test acc | TTA acc | peak RSS MB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in results["time_to_accuracy"]:
            tta = f"{row['tta_accuracy']:.2%}" if row["tta_accuracy"] is not None else "-"
            lines.append(
                f"| {row['recipe']} | {row['seed']} | {row['train_seconds']:.0f} "
                f"| {row['images_per_second']:.0f} "
                f"| {row['test_accuracy']:.2%} | {tta} | {row['peak_rss_mb_of_stages']:.0f} |"
            )
    if results["processes"]:
        lines += ["", "| processes | device | images/s |", "| ---: | --- | ---: |"]
        lines += [
            f"| {row['processes']} | {row['device']} | {row['images_per_second']:.0f} |"
            for row in results["processes"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help="data/prepared of a full-size run")
    parser.add_argument(
        "--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    parser.add_argument(
        "--resnet-steps", type=int, default=12, help="timed steps per resnet18 measurement on CPU"
    )
    parser.add_argument(
        "--tutorial-steps", type=int, default=40, help="timed steps per tutorial measurement on CPU"
    )
    parser.add_argument(
        "--archive", type=Path, help="archive for time-to-accuracy runs (e.g. the local mirror)"
    )
    parser.add_argument("--sha256", help="its sha256")
    parser.add_argument(
        "--time-to-accuracy", nargs="*", default=[], choices=sorted(RECIPES), help="recipes to run"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="time-to-accuracy runs per recipe (seeds 0, 1, ...)"
    )
    parser.add_argument(
        "--processes", type=int, nargs="*", default=[], help="process counts for the DDP rows"
    )
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repeats of each throughput config")
    parser.add_argument(
        "--emulate",
        choices=sorted(EMULATION),
        default="native",
        help="limit oneDNN and ATen to the instructions of a weaker class of CPU",
    )
    parser.add_argument("--name", default="cpu", help="results/<name>.json and .md")
    arguments = parser.parse_args()
    if arguments.one:
        print(json.dumps(run_one(json.loads(arguments.one))))
        return
    results: dict[str, Any] = {
        "machine": machine(),
        "throughput": [],
        "time_to_accuracy": [],
        "processes": [],
    }
    if arguments.prepared:
        steps = {"resnet18": arguments.resnet_steps, "tutorial": arguments.tutorial_steps}
        results["throughput"] = throughput(
            arguments.prepared.resolve(), arguments.devices, steps, arguments.rounds, arguments.emulate
        )
    for recipe in arguments.time_to_accuracy:
        results["time_to_accuracy"] += time_to_accuracy(
            recipe, arguments.archive.resolve(), arguments.sha256, arguments.repeat
        )
    if arguments.processes:
        results["processes"] = processes(arguments.archive.resolve(), arguments.sha256, arguments.processes)
    output = REPO / "benchmarks" / "results"
    output.mkdir(exist_ok=True)
    (output / f"{arguments.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / f"{arguments.name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
