"""The networks: the CIFAR variant of ResNet-18, and the four-block net of the PyTorch tutorial.

Both take normalised images [B, 3, 32, 32] and return logits [B, 10]. Shapes in comments are
for width w = 64. No device, file or precision handling here. pipeline/architectures.py names them
for params.yaml's `model.arch`.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.architectures import ARCHITECTURES

CLASS_COUNT = 10
ONEDNN_SAFE_CHANNELS = 16  # narrower strided 1x1 convolutions get PointwiseDownsample (see there)


class PointwiseDownsample(nn.Conv2d):
    """nn.Conv2d(in, out, 1, stride): the same parameters and values, computed as a 1x1
    convolution with stride 1 on every `stride`-th pixel.

    Used for shortcuts with fewer than 16 input channels. There oneDNN's own strided 1x1 kernel
    on the CPU (channels_last) computes a wrong weight gradient (uxlfoundation/oneDNN issue 6035,
    open: it writes past a work buffer when the channels are fewer than its block, 8 with AVX2
    and 16 with AVX-512). Measured on an AVX2 CPU, torch 2.14.1: 4 -> 8 channels, wrong by about
    the size of the values with 2 threads, or a hang; a segmentation fault with 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, bias: bool) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, input: Tensor) -> Tensor:
        step = self.stride[0]
        return functional.conv2d(input[:, :, ::step, ::step], self.weight, self.bias)


def pointwise(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    """A 1x1 convolution for a shortcut: PointwiseDownsample where oneDNN would get it wrong."""
    if stride > 1 and in_channels < ONEDNN_SAFE_CHANNELS:
        return PointwiseDownsample(in_channels, out_channels, stride, bias)
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, fig. 2 left)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                pointwise(in_channels, out_channels, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem with stride 1 and no max-pool; w=64 has 11,173,962 parameters."""

    def __init__(self, width: int = 64, classes: int = CLASS_COUNT) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        widths = [width, 2 * width, 4 * width, 8 * width]
        stages: list[nn.Module] = []
        in_channels = width
        for index, out_channels in enumerate(widths):
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)
                )
            )
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # [B, 64, 32, 32]
        x = self.layer1(x)  # [B, 64, 32, 32]
        x = self.layer2(x)  # [B, 128, 16, 16]
        x = self.layer3(x)  # [B, 256, 8, 8]
        x = self.layer4(x)  # [B, 512, 4, 4]
        x = self.pool(x).flatten(1)  # [B, 512]
        logits: Tensor = self.fc(x)  # [B, 10]
        return logits


class TutorialBlock(nn.Module):
    """The tutorial's ResBlk: conv3x3(stride)-BN-ReLU-conv3x3-BN plus a shortcut, ReLU after the sum.

    The shortcut is the identity when the channel counts match, even when the main path has
    stride 2. The tutorial's last block is such a case: its main path gives a 1x1 map and its
    shortcut a 2x2 one, so the sum broadcasts the 1x1 map over 2x2. That is a quirk, kept on
    purpose: the tutorial's published results depend on it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                pointwise(in_channels, out_channels, stride, bias=True), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))  # may broadcast [B, C, 1, 1] + [B, C, 2, 2], see above


class TutorialNet(nn.Module):
    """The tutorial's four-block network; w=64 has 9,553,674 parameters."""

    def __init__(self, width: int = 64, classes: int = CLASS_COUNT) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=3, padding=0), nn.BatchNorm2d(width))
        self.block1 = TutorialBlock(width, 2 * width, stride=2)
        self.block2 = TutorialBlock(2 * width, 4 * width, stride=2)
        self.block3 = TutorialBlock(4 * width, 8 * width, stride=2)
        self.block4 = TutorialBlock(8 * width, 8 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))  # [B, 64, 10, 10]
        x = self.block1(x)  # [B, 128, 5, 5]
        x = self.block2(x)  # [B, 256, 3, 3]
        x = self.block3(x)  # [B, 512, 2, 2]
        x = self.block4(x)  # [B, 512, 2, 2]: main path 1x1, broadcast onto the 2x2 shortcut
        x = self.pool(x).flatten(1)  # [B, 512]
        logits: Tensor = self.fc(x)  # [B, 10]
        return logits


def build_model(arch: str, width: int, classes: int = CLASS_COUNT) -> nn.Module:
    """The network `arch` names in pipeline.architectures.ARCHITECTURES, freshly initialised."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown arch {arch!r} (pipeline/architectures.py lists {', '.join(ARCHITECTURES)})"
        )
    builder = getattr(sys.modules[__name__], ARCHITECTURES[arch].builder)
    model: nn.Module = builder(width, classes)
    return model
