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
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_train import EMULATION, measure_in_subprocess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, help="data/prepared of a full-size run")
    parser.add_argument("--routes", nargs="+", default=[], help="sets of routes, as m,w,s,c")
    parser.add_argument("--arch", choices=("resnet18", "tutorial"), default="resnet18")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of batch 128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--emulate", choices=sorted(EMULATION), default="native")
    arguments = parser.parse_args()
    base = {
        "arch": arguments.arch,
        "device": "cpu",
        "prepared": str(arguments.prepared),
        "batch": 128,
        "warmup": 3,
        "steps": arguments.steps,
        "emulate": arguments.emulate,
        "loop": "pipeline",
        "precision": arguments.precision,
        "compile": False,
    }
    speeds: dict[str, list[float]] = {routes: [] for routes in arguments.routes}
    for _ in range(arguments.rounds):
        for routes in arguments.routes:
            result = measure_in_subprocess(base | {"routes": routes})
            speeds[routes].append(result["images_per_second"])
            print(f"{routes}: {speeds[routes][-1]:.1f} images/s", flush=True)
    for routes, values in speeds.items():
        rounds = ", ".join(f"{value:.1f}" for value in values)
        print(f"routes {routes}: median {statistics.median(values):.1f} images/s ({rounds})")


if __name__ == "__main__":
    main()
