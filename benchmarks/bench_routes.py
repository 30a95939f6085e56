"""Convolution routes on the whole network: the pipeline's training loop with each set of routes.

    python benchmarks/bench_routes.py --prepared data/prepared --routes 1,256,256,64 1,16,64,64
    python benchmarks/bench_routes.py --prepared data/prepared --emulate avx2 --arch tutorial \\
        --precision fp32 --routes 4,0,0,1073741824 1,9,9,128

A route that wins alone in bench_convolution.py can still lose in the network (other layouts,
caches); this is the check before a class takes it. Each set of routes
(`pipeline.hardware.Routes` fields: matmul_max_pixels, weight_gradient_max_pixels,
weight_gradient_max_pixels_strided, weight_gradient_min_channels) trains `--steps` steps eager in
a fresh process, the sets alternating `--rounds` times; prints images/s per round and the median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_train import EMULATION, pipeline_loop  # noqa: E402

import pipeline.hardware as hardware  # noqa: E402


def measure(config: dict[str, str | int]) -> float:
    """images/s of one run, in this process, with the class's routes replaced by config's."""
    isa = hardware.cpu_class()
    routes = hardware.Routes(*(int(value) for value in str(config["routes"]).split(",")))
    hardware.SETTINGS[isa] = dataclasses.replace(hardware.SETTINGS[isa], routes=routes)
    arch, precision, steps = str(config["arch"]), str(config["precision"]), int(config["steps"])
    result = pipeline_loop(arch, "cpu", Path(str(config["prepared"])), 128, 3, steps, precision, False)
    return float(result["images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help="data/prepared of a full-size run")
    parser.add_argument("--routes", nargs="+", default=[], help="sets of routes, as m,w,s,c")
    parser.add_argument("--arch", choices=("resnet18", "tutorial"), default="resnet18")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of batch 128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--emulate", choices=sorted(EMULATION), default="native")
    arguments = parser.parse_args()
    if arguments.one:
        print(json.dumps(measure(json.loads(arguments.one))))
        return
    speeds: dict[str, list[float]] = {routes: [] for routes in arguments.routes}
    for _ in range(arguments.rounds):
        for routes in arguments.routes:
            config = {
                "routes": routes,
                "arch": arguments.arch,
                "precision": arguments.precision,
                "steps": arguments.steps,
                "prepared": str(arguments.prepared),
            }
            completed = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(config)],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ | EMULATION[arguments.emulate],
            )
            speeds[routes].append(float(completed.stdout.strip().splitlines()[-1]))
            print(f"{routes}: {speeds[routes][-1]:.1f} images/s", flush=True)
    for routes, values in speeds.items():
        rounds = ", ".join(f"{value:.1f}" for value in values)
        print(f"routes {routes}: median {statistics.median(values):.1f} images/s ({rounds})")


if __name__ == "__main__":
    main()
