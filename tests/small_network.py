"""A network without BatchNorm, for comparing data-parallel runs with one process exactly.

BatchNorm normalises with each process's own half batch (PyTorch's SyncBatchNorm, which would make
them global, runs on CUDA only). Imported by the tests and by their worker processes' hook."""

from __future__ import annotations

from torch import nn


def small_network(arch: str, width: int, classes: int) -> nn.Module:
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(32, classes))
