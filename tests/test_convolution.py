from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import pipeline.convolution as convolution
from pipeline.convolution import (
    SmallMapConv2d,
    choose_route,
    matmul_conv2d,
    use_small_map_convolutions,
    weight_gradient,
)
from pipeline.model import build_model


def gradients(output: Tensor, inputs: list[Tensor], seed: int = 1) -> tuple[Tensor, ...]:
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    return torch.autograd.grad(output, inputs, upstream)


# (in_channels, out_channels, map size, kernel, stride, padding, bias, the route it takes)
Case = tuple[int, int, int, int, int, int, bool, str]
CASES: list[Case] = [
    (5, 7, 1, 3, 1, 1, True, "matmul"),  # 1x1 map: centre tap only
    (5, 7, 2, 3, 2, 1, True, "matmul"),  # 2x2 -> 1x1
    (5, 7, 2, 3, 1, 1, False, "matmul"),
    (6, 4, 3, 3, 2, 1, True, "matmul"),  # 3x3 -> 2x2
    (64, 6, 4, 3, 1, 1, True, "matmul-weight-gradient"),
    (64, 6, 8, 3, 2, 1, False, "matmul-weight-gradient"),
    (64, 6, 8, 1, 2, 0, False, "matmul-weight-gradient"),  # a 1x1 shortcut
    (8, 6, 8, 3, 1, 1, True, "onednn"),
]


@pytest.mark.parametrize("case", CASES)
def test_every_route_matches_conv2d_and_its_gradients(case: Case) -> None:
    in_channels, out_channels, size, kernel, stride, padding, bias, route = case
    torch.manual_seed(0)
    reference = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=bias).double()
    fast = SmallMapConv2d.replacing(reference)
    assert isinstance(fast, SmallMapConv2d)
    images = torch.randn(3, in_channels, size, size, dtype=torch.float64, requires_grad=True)
    expected, got = reference(images), fast(images)
    out_pixels = expected.shape[-1] * expected.shape[-2]
    assert choose_route(out_pixels, in_channels, stride) == route
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    inputs = [images, *reference.parameters()]
    expected_gradients = gradients(expected, inputs)
    for got_gradient, expected_gradient in zip(gradients(got, inputs), expected_gradients, strict=True):
        torch.testing.assert_close(got_gradient, expected_gradient, rtol=1e-12, atol=1e-12)


def test_matmul_routes_run_where_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        convolution, "matmul_conv2d", lambda *args: calls.append("matmul") or matmul_conv2d(*args)
    )
    monkeypatch.setattr(
        convolution, "weight_gradient", lambda *args: calls.append("weight") or weight_gradient(*args)
    )
    small = SmallMapConv2d(5, 7, 3, 2, 1)
    small(torch.randn(2, 5, 2, 2)).sum().backward()
    assert calls == ["matmul"]
    calls.clear()
    medium = SmallMapConv2d(64, 7, 3, 1, 1)
    medium(torch.randn(2, 64, 4, 4)).sum().backward()
    assert calls == ["weight"]
    calls.clear()
    large = SmallMapConv2d(8, 7, 3, 1, 1)
    large(torch.randn(2, 8, 16, 16)).sum().backward()
    assert calls == []


def test_autocast_gives_bf16_outputs_and_float32_gradients() -> None:
    torch.manual_seed(0)
    reference = nn.Conv2d(64, 32, 3, 2, 1).to(memory_format=torch.channels_last)
    fast = SmallMapConv2d.replacing(reference)
    images = torch.randn(8, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = reference(images), fast(images)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)
    parameters = list(reference.parameters())
    for got_gradient, expected_gradient in zip(
        gradients(got.float(), parameters), gradients(expected.float(), parameters), strict=True
    ):
        assert got_gradient.dtype == torch.float32
        # Both are sums of bf16 products, each rounded to bf16 by its own kernel: they may differ
        # by a bf16 step of the largest values (0.25 at 32-64, seen on an AVX2 CPU).
        bf16_steps = 2 * 2**-8 * expected_gradient.abs().max().item()
        torch.testing.assert_close(got_gradient, expected_gradient, rtol=0.02, atol=bf16_steps)


@pytest.mark.parametrize("arch", ["resnet18", "tutorial"])
def test_swapping_keeps_parameters_and_outputs(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 8).double().eval()
    before = dict(model.named_parameters())
    state_keys = list(model.state_dict())
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = model(images)
    plain = sum(type(module) is nn.Conv2d for module in model.modules())
    use_small_map_convolutions(model)
    assert list(model.state_dict()) == state_keys
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    assert all(after[name] is parameter for name, parameter in before.items())  # the very same tensors
    swapped = [module for module in model.modules() if isinstance(module, SmallMapConv2d)]
    # every plain one; the narrow shortcuts stay PointwiseDownsample (pipeline.model)
    assert len(swapped) == plain > 0
    torch.testing.assert_close(model(images), expected, rtol=1e-12, atol=1e-12)


def test_unusual_convolutions_are_left_alone() -> None:
    for conv in [
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, (3, 1), padding=(1, 0)),
        nn.Conv2d(4, 4, 3, padding="same"),
    ]:
        assert SmallMapConv2d.replacing(conv) is conv


def test_the_convolution_benchmark_times_each_route_in_the_precision_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its weight-gradient route once ran in bf16 whatever --precision said, which set the fp32
    # routes of two classes of CPU from bf16 timings.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    bench = importlib.import_module("bench_convolution")
    images, weight = torch.randn(2, 64, 4, 4), torch.randn(8, 64, 3, 3)
    assert bench.weight_gradient_as_matmul(images, weight, 1, 1).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bench.weight_gradient_as_matmul(images, weight, 1, 1).dtype == torch.bfloat16
