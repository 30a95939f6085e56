"""The engine shared by train, evaluate and predict: devices, precision, data on the device, loops.

The data path has no per-image Python work: a split lives on the device as one uint8 tensor,
and each epoch is permuted and augmented in one pass (pipeline.augmentation). Every random draw
is a function of (seed, epoch), so a run resumed from a checkpoint, or spread over several
processes, sees exactly the same batches. The step itself is pipeline.step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as functional
from filelock import FileLock, Timeout
from torch import Tensor, nn

from pipeline.augmentation import augment_epoch
from pipeline.convolution import use_small_map_convolutions
from pipeline.data import Split
from pipeline.errors import PipelineError
from pipeline.hardware import NATIVE_BF16, IsaClass, cpu_class, settings_for
from pipeline.muon import MuonWithSgd
from pipeline.params import TrainParams
from pipeline.step import CudaGraphStep, DeviceTotals, LearningRate, TrainStep, WeightAverage

Precision = Literal["bf16", "fp32"]
ReduceSum = Callable[[Tensor], Tensor]
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- devices and precision


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


def compile_model(module: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile for the device; on the CPU with Inductor's cache kept per vector ISA and
    rid of the binaries an interrupted compilation left incomplete."""
    if device.type == "cpu":
        cache = inductor_cache_base()
        if removed := remove_incomplete_binaries(cache):
            logger.warning(
                "removed %d incomplete compiled file(s) from Inductor's cache %s, left by an "
                "interrupted compilation; they are compiled again",
                len(removed),
                cache,
            )
        use_inductor_cache_of_this_vector_isa()
    return torch.compile(module)  # type: ignore[return-value]


INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
VECTOR_ISA_FOLDER_PREFIX = "vector-isa-"


def inductor_cache_base() -> Path:
    """The folder Inductor's cache would use, above the per-ISA folder an earlier call chose."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get(INDUCTOR_CACHE_VARIABLE)
    base = Path(chosen) if chosen else Path(default_cache_dir())
    return base.parent if base.name.startswith(VECTOR_ISA_FOLDER_PREFIX) else base


def use_inductor_cache_of_this_vector_isa() -> Path:
    """Point Inductor's cache at a sub-folder named after the vector ISA its C++ code is generated
    for (`vector-isa-avx512-avx512_vnni`, `vector-isa-avx2`, ...), under the folder it would use.

    In torch 2.14.1 the key of Inductor's FX graph cache does not contain that ISA, and (by all
    signs) a cached graph's C++ is built again for the ISA of the process that loads it. A graph
    generated for AVX2 (8 floats a vector) and loaded under AVX-512 (16) then fails: measured here,
    `malloc(): corrupted size vs. prev_size` or a segmentation fault on the first step; the other
    way round, a NaN loss at step 1. That happens whenever one cache folder sees two ISAs: runs
    with `ATEN_CPU_CAPABILITY` (the benchmarks' emulation), or a cache folder shared by machines of
    different classes. Separate folders keep every graph with the ISA it was generated for. The
    folder chosen is kept in the environment, where Inductor and its compile workers read it."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa_name = re.sub(r"[^a-z0-9_]+", "-", str(pick_vec_isa()).lower()).strip("-")
    folder = inductor_cache_base().absolute() / f"{VECTOR_ISA_FOLDER_PREFIX}{isa_name}"
    os.environ[INDUCTOR_CACHE_VARIABLE] = str(folder)
    return folder


def remove_incomplete_binaries(folder: Path) -> list[Path]:
    """Delete the shared objects and object files under `folder` (an Inductor cache) that are not
    complete ELF files; Inductor builds a missing one again. Returns the files deleted.

    Inductor reuses a cached binary whenever its file exists. A run killed while the compiler or
    linker wrote one (Ctrl-C during the first compiled epoch, an out-of-memory kill) can leave it
    empty or cut short, and every later compiled run then stops at its first step: measured here
    with torch 2.14.1, `ImportError: ... file too short` for an empty .so (pytorch/pytorch#102539)
    and a bus error with no message for one cut short. GNU ld puts the section header table at
    the end of the file, so a file that ends before that table ends is incomplete. A file is
    checked under the lock Inductor builds it under (`locks/<key>.lock` beside its folder) and
    left alone while another process holds that lock: it is being built."""
    removed: list[Path] = []
    binaries = sorted(path for path in folder.rglob("*") if path.suffix in (".so", ".o"))
    for path in binaries:
        if not path.is_file() or is_complete_elf(path):
            continue
        lock = FileLock(path.parent.parent / "locks" / f"{path.name.split('.')[0]}.lock", timeout=0)
        try:
            with lock:
                if path.is_file() and not is_complete_elf(path):
                    path.unlink()
                    removed.append(path)
        except Timeout:
            continue
    return removed


def is_complete_elf(path: Path) -> bool:
    """Whether `path` starts with an ELF header and is long enough to hold its section header
    table (for 64-bit files; a 32-bit one needs the magic number only)."""
    with path.open("rb") as file:
        header = file.read(64)
    if len(header) < 16 or header[:4] != b"\x7fELF":
        return False
    if header[4] != 2:  # ELFCLASS64 only: 32-bit headers lay out these fields elsewhere
        return True
    if len(header) < 64:
        return False
    order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
    table_offset = int.from_bytes(header[0x28:0x30], order)  # e_shoff
    entry_size = int.from_bytes(header[0x3A:0x3C], order)  # e_shentsize
    entries = int.from_bytes(header[0x3C:0x3E], order)  # e_shnum
    return path.stat().st_size >= table_offset + entry_size * entries


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


# ----------------------------------------------------------------------------- data on the device


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


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam, or Muon for the filters with SGD for the rest (pipeline.muon); weight
    decay on conv and linear weights only, never on BN or biases (nor on Muon's filters)."""
    decay = [parameter for parameter in model.parameters() if parameter.ndim > 1]
    no_decay = [parameter for parameter in model.parameters() if parameter.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel per step on CUDA, safe to capture in a CUDA graph (Adam keeps its step
    # count on the device); on the CPU the foreach (multi-tensor) path is the fast one.
    on_cuda = next(model.parameters()).is_cuda
    if params.optimizer == "muon":
        filters = [parameter for parameter in decay if parameter.ndim == 4]
        other_decay = [parameter for parameter in decay if parameter.ndim != 4]
        return MuonWithSgd(
            [
                # No weight decay: Muon holds each filter bank at a fixed norm.
                {
                    "params": filters,
                    "muon": True,
                    "momentum": params.muon_momentum,
                    "lr_ratio": params.muon_lr / params.lr,
                },
                {"params": other_decay, "weight_decay": params.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov,
            fused=on_cuda,
            product_dtype=torch.bfloat16 if on_cuda else torch.float32,
        )
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov,
            **({"fused": True} if on_cuda else {"foreach": True}),
        )
    return torch.optim.Adam(
        groups,
        lr=params.lr,
        betas=(params.momentum, params.adam_beta2),
        **({"fused": True, "capturable": True} if on_cuda else {"foreach": True}),
    )


# ----------------------------------------------------------------------------- loops


@dataclass
class EpochTotals:
    """Running sums of one epoch, on the host; saved in checkpoints so a resumed epoch reports the same."""

    loss_sum: float = 0.0
    correct: int = 0
    images: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainSetup:
    """Everything one epoch of training needs, fixed for the whole run."""

    step: TrainStep  # model, optimizer, learning rate, weight average, device-side totals
    data: DeviceSplit
    transform: InputTransform  # also the step's; the validation split is scored with it
    params: TrainParams
    device: torch.device
    precision: Precision
    steps_per_epoch: int
    rank: int = 0
    world_size: int = 1
    reduce_sum: ReduceSum | None = None  # sum a tensor over processes (None: single process)
    graph: CudaGraphStep | None = None  # the same step replayed as a CUDA graph (train.cuda_graphs)

    def run_step(self, images: Tensor, centres: Tensor, labels: Tensor) -> None:
        (self.graph or self.step)(images, centres, labels)


def build_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    transform: InputTransform,
    params: TrainParams,
    *,
    device: torch.device,
    precision: Precision,
    total_steps: int,
    plain_model: nn.Module | None = None,
    average: WeightAverage | None = None,
) -> TrainStep:
    """The training step of a run; on CUDA its learning rate lives on the device.

    `model` runs forward and backward (maybe compiled or DistributedDataParallel); `plain_model`
    (default: `model`) is the module whose weights `average` follows.
    """
    return TrainStep(
        model=model,
        plain_model=plain_model if plain_model is not None else model,
        optimizer=optimizer,
        learning_rate=LearningRate(
            optimizer, params, total_steps, device=device, on_device=device.type == "cuda"
        ),
        transform=transform,
        params=params,
        autocast=lambda: autocast(device, precision),
        totals=DeviceTotals(device),
        average=average,
    )


class StopTraining(Exception):
    """Raised by a stop check: the current position is consistent and can be checkpointed."""


def train_one_epoch(
    setup: TrainSetup,
    epoch: int,
    totals: EpochTotals,
    start_step: int = 0,
    should_stop: Callable[[int], bool] = lambda step: False,
    advance: Callable[[float], None] = lambda amount: None,
) -> dict[str, float]:
    """Train from `start_step` to the end of `epoch`; `totals` is updated in place.

    The epoch's batches are augmented in one pass first (pipeline.augmentation); each step then
    takes a slice. `should_stop(steps_done)` is asked after each checked step; when it says
    yes, StopTraining is raised with `totals` and the optimizer state at a step boundary.
    Returns the epoch's mean loss and accuracy. A non-finite loss raises PipelineError naming
    the step.
    """
    params = setup.params
    started = time.perf_counter()
    batches = augment_epoch(
        setup.data.images,
        setup.data.labels,
        params.augment,
        seed=params.seed,
        epoch=epoch,
        steps=setup.steps_per_epoch,
        batch_size=params.batch_size,
        rank=setup.rank,
        world_size=setup.world_size,
    )
    check_every = 1 if setup.device.type == "cpu" else 16  # each check syncs host and device
    window_start = start_step  # the first step whose sums are still on the device
    setup.step.model.train()

    def check(done: int) -> None:
        nonlocal window_start
        local = setup.step.totals.take()  # [loss_sum, correct, steps, first_non_finite]
        sums = torch.stack([local[0], local[1], (local[3] >= 0).double()])
        if setup.reduce_sum is not None:
            sums = setup.reduce_sum(sums)
        loss_sum, correct, non_finite, first_here = torch.cat([sums, local[3:]]).tolist()
        if non_finite:
            # name the first bad step (1-based); when it was on another process, the window's first
            first = window_start + max(0, int(first_here))
            raise PipelineError(
                f"loss became NaN or infinite at epoch {epoch + 1}, step {first + 1}; nothing was written"
            )
        totals.loss_sum += loss_sum * batches.batch_size
        totals.correct += int(correct)
        totals.images += (done - window_start) * params.batch_size
        window_start = done

    for step in range(start_step, setup.steps_per_epoch):
        setup.step.learning_rate.set(epoch * setup.steps_per_epoch + step)
        setup.run_step(*batches.batch(step))
        advance(1)
        done = step + 1
        if done % check_every == 0 or done == setup.steps_per_epoch:
            check(done)
            totals.seconds += time.perf_counter() - started
            started = time.perf_counter()
            if done < setup.steps_per_epoch and should_stop(done):
                raise StopTraining
    return {
        "loss": totals.loss_sum / max(1, totals.images),
        "accuracy": totals.correct / max(1, totals.images),
    }


TTA_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # 1-pixel translations (rows, columns)


def _translate(inputs: Tensor, rows: int, columns: int) -> Tensor:
    padded = functional.pad(inputs, (1, 1, 1, 1), mode="reflect")
    height, width = inputs.shape[-2:]
    return padded[..., 1 + rows : 1 + rows + height, 1 + columns : 1 + columns + width]


@torch.no_grad()
def view_logits(
    model: nn.Module,
    images: Tensor,
    transform: InputTransform,
    *,
    batch_size: int,
    precision: Precision,
    tta: bool = False,
    tta_translate: bool = False,
) -> Tensor:
    """Logits float32 [V, N, 10] for uint8 images [N, 3, 32, 32] on the model's device, one row per view.

    View 0 is the image itself; with `tta` view 1 is its mirror, and with `tta_translate` too both
    follow shifted by one pixel in each of four directions.
    """
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        inputs = transform(images[start : start + batch_size])
        views = [inputs]
        if tta:
            views.append(inputs.flip(-1))
            if tta_translate:
                views += [_translate(view, *shift) for view in views[:2] for shift in TTA_SHIFTS]
        with autocast(images.device, precision):
            outputs.append(torch.stack([model(view).float() for view in views]))
    if not outputs:
        return torch.empty(1 + tta * (1 + 8 * tta_translate), 0, 10, device=images.device)
    return torch.cat(outputs, dim=1)


def predict_logits(
    model: nn.Module,
    images: Tensor,
    transform: InputTransform,
    *,
    batch_size: int,
    precision: Precision,
    tta: bool = False,
    tta_translate: bool = False,
) -> Tensor:
    """Logits float32 [N, 10]: with `tta`, the mean over the views of `view_logits`."""
    views = view_logits(
        model,
        images,
        transform,
        batch_size=batch_size,
        precision=precision,
        tta=tta,
        tta_translate=tta_translate,
    )
    return views.mean(0)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy of the plain images, no label smoothing
    accuracy: float  # of the plain images
    images: int
    predictions: Tensor  # int64 [N], of the plain images
    confidences: Tensor  # float32 [N]: the predicted class's softmax probability
    tta_accuracy: float | None  # of the logits averaged over the views, when asked for


def evaluate(
    model: nn.Module,
    data: DeviceSplit,
    transform: InputTransform,
    *,
    batch_size: int,
    precision: Precision,
    tta: bool = False,
    tta_translate: bool = False,
    rank: int = 0,
    world_size: int = 1,
    reduce_sum: ReduceSum | None = None,
) -> Evaluation:
    """Loss and accuracy of `model` on `data`, and with `tta` the TTA accuracy, from one pass over the views.

    With several processes each takes every world_size-th image and the sums are reduced.
    """
    images, labels = data.images[rank::world_size], data.labels[rank::world_size]
    views = view_logits(
        model,
        images,
        transform,
        batch_size=batch_size,
        precision=precision,
        tta=tta,
        tta_translate=tta_translate,
    )
    predictions = views[0].argmax(1)
    confidences = views[0].softmax(1).gather(1, predictions[:, None])[:, 0]
    sums = torch.stack(
        [
            functional.cross_entropy(views[0], labels, reduction="sum"),
            (predictions == labels).sum().float(),
            (views.mean(0).argmax(1) == labels).sum().float(),
            torch.tensor(float(len(labels)), device=views.device),
        ]
    )
    if reduce_sum is not None:
        sums = reduce_sum(sums)
    loss_sum, correct, tta_correct, count = sums.tolist()
    count = max(1.0, count)
    return Evaluation(
        loss_sum / count,
        correct / count,
        int(count),
        predictions,
        confidences,
        tta_correct / count if tta else None,
    )
