"""Forward + backward time of each convolution shape in ResNet-18 and the tutorial net, per route.

    python benchmarks/bench_convolution.py [--batch 128] [--width 64]

Routes (pipeline/convolution.py): oneDNN's convolution, im2col + one matrix product for the whole
convolution, and oneDNN with only the weight gradient as a matrix product, each in the precision
--precision asks for (bf16 autocast or fp32), channels_last, on the CPU; prints a Markdown table
and the route `choose_route` picks.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as functional
from torch import Tensor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.convolution import _MatmulWeightGradient, choose_route, matmul_conv2d  # noqa: E402
from pipeline.hardware import cpu_class, settings_for  # noqa: E402

Convolution = Callable[[Tensor, Tensor, int, int], Tensor]


def onednn(images: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    return functional.conv2d(images, weight, None, stride, padding)


def matmul(images: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    return matmul_conv2d(images, weight, None, stride, padding)


def weight_gradient_as_matmul(images: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    if torch.is_autocast_enabled("cpu"):  # as SmallMapConv2d does: one dtype throughout the Function
        dtype = torch.get_autocast_dtype("cpu")
        images, weight = images.to(dtype), weight.to(dtype)
    with torch.autocast("cpu", enabled=False):
        output: Tensor = _MatmulWeightGradient.apply(images, weight, None, stride, padding)
    return output


def milliseconds(
    convolution: Convolution, images: Tensor, weight: Tensor, stride: int, repeats: int, bf16: bool
) -> float:
    """Best of `repeats` timed forward + backward passes, after two warm-up passes."""
    times = []
    upstream = None  # a random gradient from above, channels_last like the network's
    dtype = torch.bfloat16 if bf16 else torch.float32
    for attempt in range(repeats + 2):
        inputs, kernel = images.detach().requires_grad_(), weight.detach().requires_grad_()
        if upstream is None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                shape = onednn(images, weight, stride, weight.shape[-1] // 2).shape
            upstream = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = convolution(inputs, kernel, stride, weight.shape[-1] // 2)
        output.backward(upstream)  # type: ignore[no-untyped-call]
        if attempt >= 2:
            times.append(time.perf_counter() - started)
    return min(times) * 1e3


def shapes(width: int) -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, input map size, stride) of the 3x3 convolutions in both nets."""
    resnet = [(width, width, 32, 1), (width, 2 * width, 32, 2), (2 * width, 2 * width, 16, 1)]
    resnet += [(2 * width, 4 * width, 16, 2), (4 * width, 4 * width, 8, 1), (4 * width, 8 * width, 8, 2)]
    resnet += [(8 * width, 8 * width, 4, 1)]
    tutorial = [(width, 2 * width, 10, 2), (2 * width, 2 * width, 5, 1), (2 * width, 4 * width, 5, 2)]
    tutorial += [(4 * width, 4 * width, 3, 1), (4 * width, 8 * width, 3, 2), (8 * width, 8 * width, 2, 1)]
    tutorial += [(8 * width, 8 * width, 2, 2), (8 * width, 8 * width, 1, 1)]
    return resnet + tutorial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    bf16 = arguments.precision == "bf16"
    isa = cpu_class()
    routes = settings_for(isa).routes
    print(
        f"batch {arguments.batch}, width {arguments.width}, torch {torch.__version__}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, CPU class {isa}\n"
    )
    print("| in -> out | map | stride | oneDNN ms | matmul ms | weight-gradient matmul ms | chosen |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for in_channels, out_channels, size, stride in shapes(arguments.width):
        images = torch.randn(arguments.batch, in_channels, size, size).to(
            torch.bfloat16 if bf16 else torch.float32
        )
        images = images.contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(out_channels, in_channels, 3, 3) * 0.05).contiguous(
            memory_format=torch.channels_last
        )
        timings = [
            milliseconds(route, images, weight, stride, arguments.repeats, bf16)
            for route in (onednn, matmul, weight_gradient_as_matmul)
        ]
        out_size = (size + 2 - 3) // stride + 1
        chosen = choose_route(out_size * out_size, in_channels, stride, routes)
        print(
            f"| {in_channels} -> {out_channels} | {size}x{size} -> {out_size}x{out_size} | {stride} | "
            + " | ".join(f"{value:.1f}" for value in timings)
            + f" | {chosen} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
