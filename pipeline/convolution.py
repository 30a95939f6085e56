"""Convolutions on small feature maps through matrix products, for the CPU.

oneDNN's convolution kernels run far below its matrix-multiply speed on this kind of CPU when the
output map has only a few pixels, and their weight gradient is the slowest part. Forward +
backward of the 3x3 convolutions of both networks, batch 128, width 64, bf16 autocast,
channels_last, 2-core Xeon with AMX (benchmarks/bench_convolution.py, results/cpu-convolution-amx-bf16.md):

    channels    output map          oneDNN   im2col + matmul   only the weight gradient as matmul
    512 -> 512  1x1                 23.5 ms       2.3 ms                14.9 ms
    512 -> 512  2x2                 53.9 ms      16.8 ms                23.9 ms
    256 -> 512  3x3 -> 2x2          25.7 ms      10.7 ms                10.0 ms
    256 -> 256  3x3                 10.6 ms      12.7 ms                 4.6 ms
    512 -> 512  4x4                 67.1 ms      50.9 ms                34.8 ms
    256 -> 512  8x8 -> 4x4          37.9 ms      36.3 ms                20.5 ms
    128 -> 256  16x16 -> 8x8        18.7 ms      59.3 ms         17-33 ms (about even)
    128 -> 128  16x16               15.9 ms     174.7 ms                41.0 ms

So on that CPU `SmallMapConv2d` computes outputs of at most 2x2 pixels as im2col + one matrix
product, keeps oneDNN's forward and input gradient but takes the weight gradient as one matrix
product for outputs of at most 4x4 pixels (8x8 when strided) with 64 or more input channels, and
leaves everything else to oneDNN. Other classes of CPU measured other thresholds (bf16 with
AVX512_BF16 alone: the same but only 1x1 outputs as one matrix product; fp32: oneDNN but for a
few strided or 2x2 to 3x3 outputs); `pipeline.hardware.SETTINGS` holds them per class. It has
the same parameters as nn.Conv2d, so state dicts and weight files do not change. On other
devices it is nn.Conv2d.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.hardware import AMX_ROUTES, ONEDNN_ONLY, Routes

Route = Literal["matmul", "matmul-weight-gradient", "onednn"]


def _columns(input: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """im2col as a view where possible: [B, C, H, W] -> patches [B, Ho, Wo, k, k, C]."""
    padded = functional.pad(input, (padding,) * 4) if padding else input
    pixels = padded.permute(0, 2, 3, 1)  # [B, H + 2p, W + 2p, C]
    patches = pixels.unfold(1, kernel, stride).unfold(2, kernel, stride)  # [B, Ho, Wo, C, k, k]
    return patches.permute(0, 1, 2, 4, 5, 3)


def matmul_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    """The same result as functional.conv2d (zero padding, no dilation, one group), via im2col.

    Returns a channels_last tensor [B, O, Ho, Wo]. Under CPU autocast the patches are built in
    the autocast dtype, so the copy is half the size.
    """
    out_channels, in_channels, kernel, _ = weight.shape
    if torch.is_autocast_enabled("cpu"):
        input = input.to(torch.get_autocast_dtype("cpu"))
    batch = input.shape[0]
    if input.shape[-2:] == (1, 1) and kernel == 2 * padding + 1:
        # A 1x1 map padded on every side: only the centre tap ever meets a pixel.
        centre = weight[:, :, padding, padding]  # [O, C]
        out = functional.linear(input.reshape(batch, in_channels), centre, bias)  # [B, O]
        return out.view(batch, out_channels, 1, 1).contiguous(memory_format=torch.channels_last)
    patches = _columns(input, kernel, stride, padding)  # [B, Ho, Wo, k, k, C]
    _, out_height, out_width = patches.shape[:3]
    columns = patches.reshape(batch * out_height * out_width, -1)  # [B*Ho*Wo, k*k*C]
    kernel_matrix = weight.permute(0, 2, 3, 1).reshape(out_channels, -1)  # [O, k*k*C], same tap order
    out = functional.linear(columns, kernel_matrix, bias)  # [B*Ho*Wo, O]
    return out.view(batch, out_height, out_width, out_channels).permute(0, 3, 1, 2)  # [B, O, Ho, Wo]


def weight_gradient(input: Tensor, grad_output: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """d(loss)/d(weight) of a convolution as one matrix product: grad_output^T @ im2col(input).

    input [B, C, H, W] and grad_output [B, O, Ho, Wo] give [O, C, k, k].
    """
    rows = grad_output.shape[0] * grad_output.shape[2] * grad_output.shape[3]
    columns = _columns(input, kernel, stride, padding).reshape(rows, -1)  # [B*Ho*Wo, k*k*C]
    gradient = grad_output.permute(0, 2, 3, 1).reshape(rows, -1).t() @ columns  # [O, k*k*C]
    return gradient.view(grad_output.shape[1], kernel, kernel, -1).permute(0, 3, 1, 2)


class _MatmulWeightGradient(torch.autograd.Function):
    """A oneDNN convolution whose weight gradient is computed by `weight_gradient` instead."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int
    ) -> Tensor:
        ctx.save_for_backward(input, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return functional.conv2d(input, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad_output, input, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(input, grad_output, weight.shape[-1], stride, padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


def choose_route(out_pixels: int, in_channels: int, stride: int, routes: Routes = AMX_ROUTES) -> Route:
    """Where each route measured fastest on this class of CPU (module docstring, pipeline.hardware)."""
    if out_pixels <= routes.matmul_max_pixels:
        return "matmul"
    limit = routes.weight_gradient_max_pixels_strided if stride > 1 else routes.weight_gradient_max_pixels
    if in_channels >= routes.weight_gradient_min_channels and out_pixels <= limit:
        return "matmul-weight-gradient"
    return "onednn"


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d that routes small output maps on the CPU through matrix products."""

    routes: Routes = AMX_ROUTES  # set per CPU class by use_small_map_convolutions

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type != "cpu":
            return super().forward(input)
        kernel, stride, padding = self.kernel_size[0], self.stride[0], self.padding
        assert isinstance(padding, tuple)  # `SmallMapConv2d.replacing` accepts only numeric padding
        out_height = (input.shape[-2] + 2 * padding[0] - kernel) // stride + 1
        out_width = (input.shape[-1] + 2 * padding[0] - kernel) // stride + 1
        route = choose_route(out_height * out_width, self.in_channels, stride, self.routes)
        if route == "onednn":
            return super().forward(input)
        if route == "matmul":
            return matmul_conv2d(input, self.weight, self.bias, stride, padding[0])
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # cast here, so the Function sees one dtype throughout
            dtype = torch.get_autocast_dtype("cpu")
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast("cpu", enabled=False):
            output: Tensor = _MatmulWeightGradient.apply(input, weight, bias, stride, padding[0])
        return output

    @classmethod
    def replacing(cls, conv: nn.Conv2d, routes: Routes = AMX_ROUTES) -> nn.Conv2d:
        """A SmallMapConv2d sharing `conv`'s parameters, or `conv` itself unless it is plain and square."""
        padding = conv.padding
        if type(conv) is not nn.Conv2d or not isinstance(padding, tuple) or padding[0] != padding[1]:
            return conv
        plain = conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
        square = conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
        if not (plain and square):
            return conv
        replacement = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.stride[0],
            padding[0],
            bias=conv.bias is not None,
            device="meta",
        )
        replacement.weight = conv.weight
        replacement.bias = conv.bias
        replacement.routes = routes
        return replacement


def use_small_map_convolutions(model: nn.Module, routes: Routes = AMX_ROUTES) -> nn.Module:
    """Swap every plain nn.Conv2d in `model` for a SmallMapConv2d with the same parameters, in
    place, routed as `routes` says (nothing is swapped when every route is oneDNN's)."""
    if routes == ONEDNN_ONLY:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, SmallMapConv2d.replacing(child, routes))
    return model
