"""Where and in which arithmetic a run computes: the device (`auto`: CUDA, then MPS, then the
CPU), the model's place and memory layout there, the precision (bf16 autocast where it measured
faster), the seeding of every random generator, the data as uint8 tensors on the device with the
transform that makes model inputs of them, and the one-line error for running out of memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.convolution import use_small_map_convolutions
from pipeline.data import Split
from pipeline.errors import PipelineError
from pipeline.hardware import NATIVE_BF16, IsaClass, cpu_class, settings_for
from pipeline.params import TrainParams

Precision = Literal["bf16", "fp32"]
ReduceSum = Callable[[Tensor], Tensor]  # sums a tensor over the processes of a run (a distributed run)
logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"device {name}: MPS is not available on this machine")
    return device


def place_model(model: nn.Module, device: torch.device, isa: IsaClass | None = None) -> nn.Module:
    """Move `model` to `device` in channels_last; on the CPU, small maps use matrix-product
    convolutions where they measured faster on this class of CPU (`isa`, default: this one's)."""
    if device.type == "cpu":
        use_small_map_convolutions(model, settings_for(isa or cpu_class()).routes)
    return model.to(device).to(memory_format=torch.channels_last)


def resolve_precision(name: str, device: torch.device, isa: IsaClass | None = None) -> Precision:
    """`auto` is bf16 autocast on CUDA, and on a CPU what measured fastest on its class
    (pipeline.hardware: bf16 on the classes with bf16 instructions). An explicit bf16 on a CPU
    without bf16 instructions is kept, with one warning: every bf16 operation is emulated there."""
    if name == "fp32":
        return "fp32"
    if device.type == "cpu":
        isa = isa or cpu_class()
        if name == "bf16":
            if isa not in NATIVE_BF16:
                logger.warning(
                    "precision bf16 on a CPU without bf16 instructions (%s class): emulated, several "
                    "times slower than fp32; `auto` would use fp32",
                    isa,
                )
            return "bf16"
        return settings_for(isa).precision
    if name == "bf16":
        return "bf16"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[None]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextlib.contextmanager
def out_of_memory_hint(param: str, batch_size: int, device: torch.device) -> Iterator[None]:
    """Turn the device running out of memory into one line naming the batch size to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise PipelineError(
            f"out of memory on {device} with {param}={batch_size}; lower {param} "
            "(memory grows with the batch)"
        ) from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): model initialisation depends on it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_freed_memory() -> None:
    """On glibc, stop returning freed blocks to the OS after every step.

    Each CPU training step frees and reallocates hundreds of MB of activations; by default
    glibc unmaps them and the next step page-faults them back in, which costs about 10% of
    the step time on 2 cores. Keeping them mapped costs a few hundred MB of resident memory.
    """
    if platform.system() != "Linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        mmap_threshold, trim_threshold, top_pad = -3, -1, -2  # mallopt parameter numbers, from malloc.h
        libc.mallopt(mmap_threshold, 1 << 30)
        libc.mallopt(trim_threshold, 1 << 34)
        libc.mallopt(top_pad, 256 << 20)


def configure_device(device: torch.device, params: TrainParams) -> None:
    """Process-wide settings of the device that trains: the CPU's allocator, cuDNN's search."""
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        # Timing cuDNN's algorithms runs each convolution shape several ways in its first steps;
        # the heuristics pick at once, maybe a slower algorithm (docs/performance.md, On one GPU).
        torch.backends.cudnn.benchmark = params.cudnn_benchmark


def describe_cpu_choice(params: TrainParams, precision: str, compiled: bool, isa: IsaClass) -> str:
    """One line: what runs on this CPU, and whether `auto` chose it and from which measurement."""
    chosen = [
        f"{precision}{' (auto)' if params.precision == 'auto' else ''}",
        f"{'compiled' if compiled else 'eager'}{' (auto)' if params.compile == 'auto' else ''}",
    ]
    source = settings_for(isa).source
    basis = f"the measurements in benchmarks/{source}" if source.startswith("results/") else source
    return f"CPU class {isa}: {', '.join(chosen)}, convolution routes of the class; auto follows {basis}"


@dataclass(frozen=True)
class DeviceSplit:
    images: Tensor  # uint8 [N, 3, 32, 32] on the device
    labels: Tensor  # int64 [N] on the device

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceSplit:
        return cls(torch.from_numpy(split.images).to(device), torch.from_numpy(split.labels).to(device))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class InputTransform:
    """uint8 pixels -> float model input: x / 255, then (x - mean) / std per channel, channels_last."""

    scale: Tensor  # [1, 3, 1, 1]: 1 / (255 std)
    shift: Tensor  # [1, 3, 1, 1]: -mean / std

    @classmethod
    def create(
        cls, mean: list[float], std: list[float], normalize: bool, device: torch.device
    ) -> InputTransform:
        mean_tensor = torch.tensor(mean if normalize else [0.0, 0.0, 0.0], dtype=torch.float32, device=device)
        std_tensor = torch.tensor(std if normalize else [1.0, 1.0, 1.0], dtype=torch.float32, device=device)
        return cls((1 / (255 * std_tensor)).view(1, 3, 1, 1), (-mean_tensor / std_tensor).view(1, 3, 1, 1))

    def __call__(self, images: Tensor) -> Tensor:
        normalised = torch.addcmul(self.shift, images.float(), self.scale)  # [B, 3, 32, 32] float32
        return normalised.contiguous(memory_format=torch.channels_last)
