"""Milliseconds per optimizer step alone, SGD against Muon (train.optimizer), for ResNet-18.

    python benchmarks/bench_optimizer.py --width 64 --device cpu      # results/cpu-muon.md

Gradients are set at random once; each optimizer takes 3 steps, then 20 timed ones; the two
alternate twice, as speeds drift between runs minutes apart.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pipeline.model import build_model
from pipeline.optimizer import build_optimizer
from pipeline.params import load_params

REPO = Path(__file__).resolve().parent.parent


def milliseconds_per_step(optimizer_name: str, width: int, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("resnet18", width).to(device)
    params = load_params(REPO / "params.yaml", [f"train.optimizer={optimizer_name}"]).train
    optimizer = build_optimizer(model, params)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    for _ in range(3):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    for optimizer_name in ("sgd", "muon", "sgd", "muon"):
        milliseconds = milliseconds_per_step(optimizer_name, args.width, device, args.steps)
        threads = torch.get_num_threads()
        print(f"width {args.width}, {threads} threads, {optimizer_name}: {milliseconds:.1f} ms per step")


if __name__ == "__main__":
    main()
