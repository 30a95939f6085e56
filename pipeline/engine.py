"""The engine shared by train, evaluate and predict: devices, precision, batches, augmentation, loops.

The data path has no per-image Python work: a split lives on the device as one uint8 tensor,
each epoch draws a fresh permutation, and random crops, flips and cutout are applied to whole
batches on the device. Every random draw is a function of (seed, epoch, step), so a run
resumed from a checkpoint, or spread over several processes, sees exactly the same batches.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.convolution import use_small_map_convolutions
from pipeline.data import Split
from pipeline.errors import PipelineError
from pipeline.params import AugmentParams, TrainParams

Precision = Literal["bf16", "fp32"]
ReduceSum = Callable[[Tensor], Tensor]
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512/AMX, Arm BF16


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


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` in channels_last; on the CPU, small maps use matrix-product convolutions."""
    if device.type == "cpu":
        use_small_map_convolutions(model)
    return model.to(device).to(memory_format=torch.channels_last)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AMX or AVX512_BF16 on x86, BF16 on Arm), per /proc/cpuinfo."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {
        flag
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for flag in line.split()
    }
    return bool(flags & BF16_CPU_FLAGS)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto` is bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere."""
    if name == "bf16":
        return "bf16"
    if name == "fp32":
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
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


def _derived_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


def step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for one step's augmentation draws: a pure function of (seed, epoch, step)."""
    return torch.Generator(device=device).manual_seed(_derived_seed(seed, epoch, step, 1))


def epoch_permutation(count: int, seed: int, epoch: int) -> Tensor:
    """The order of the training images in one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(_derived_seed(seed, epoch, 0, 0))
    return torch.randperm(count, generator=generator)


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


@dataclass(frozen=True)
class AugmentDraws:
    """One batch's random choices, drawn for the whole global batch so every process slices the same."""

    shifts: Tensor  # int64 [B, 2]: crop offset (rows, columns) in -padding..padding
    flips: Tensor  # bool [B]
    cutout_centres: Tensor  # int64 [B, 2]

    @classmethod
    def draw(cls, size: int, params: AugmentParams, generator: torch.Generator) -> AugmentDraws:
        device = generator.device
        padding = params.crop_padding
        shifts = torch.randint(-padding, padding + 1, (size, 2), generator=generator, device=device)
        flips = torch.randint(0, 2, (size,), generator=generator, device=device).bool()
        centres = torch.randint(0, 32, (size, 2), generator=generator, device=device)
        return cls(shifts, flips, centres)

    def __getitem__(self, rows: slice) -> AugmentDraws:
        return AugmentDraws(self.shifts[rows], self.flips[rows], self.cutout_centres[rows])


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in [-size+1, 2 size - 2] onto [0, size) as reflect padding does (no edge repeat)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_and_flip(images: Tensor, draws: AugmentDraws, params: AugmentParams) -> Tensor:
    """Per-sample random crop of the reflect-padded image and horizontal flip, as one uint8 gather."""
    if params.crop_padding == 0 and not params.flip:
        return images
    batch, channels, height, width = images.shape
    positions = torch.arange(height, device=images.device)
    rows = _reflect(draws.shifts[:, :1] + positions, height)  # [B, 32]
    columns = _reflect(draws.shifts[:, 1:] + positions, width)  # [B, 32]
    if params.flip:
        columns = torch.where(draws.flips[:, None], columns.flip(1), columns)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    return images[batch_index, channel_index, rows[:, None, :, None], columns[:, None, None, :]]


def cutout(inputs: Tensor, draws: AugmentDraws, size: int) -> Tensor:
    """Zero a size x size square per sample (the mean, after normalisation); it may cross the border."""
    if size == 0:
        return inputs
    positions = torch.arange(inputs.shape[-1], device=inputs.device)
    start = draws.cutout_centres - size // 2  # [B, 2]
    inside_rows = (positions >= start[:, :1]) & (positions < start[:, :1] + size)  # [B, 32]
    inside_columns = (positions >= start[:, 1:]) & (positions < start[:, 1:] + size)  # [B, 32]
    mask = inside_rows[:, None, :, None] & inside_columns[:, None, None, :]  # [B, 1, 32, 32]
    return inputs.masked_fill(mask, 0.0)


# ----------------------------------------------------------------------------- optimisation


def learning_rate_factor(step: int, total_steps: int, schedule: str, warmup: float) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return 1.0
    warmup_steps = round(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = (step - warmup_steps + 1) / (decay_steps + 1)  # in (0, 1): below the peak, never exactly 0
    if schedule == "onecycle":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam, with weight decay on conv and linear weights only, never on BN or biases."""
    decay = [parameter for parameter in model.parameters() if parameter.ndim > 1]
    no_decay = [parameter for parameter in model.parameters() if parameter.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel per step on CUDA; on the CPU the foreach (multi-tensor) path is the fast one.
    implementation = {"fused": True} if next(model.parameters()).is_cuda else {"foreach": True}
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=params.lr, momentum=params.momentum, nesterov=params.nesterov, **implementation
        )
    return torch.optim.Adam(
        groups, lr=params.lr, betas=(params.momentum, params.adam_beta2), **implementation
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


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

    model: nn.Module  # what runs forward and backward (maybe compiled and/or DistributedDataParallel)
    optimizer: torch.optim.Optimizer
    data: DeviceSplit
    transform: InputTransform
    params: TrainParams
    device: torch.device
    precision: Precision
    steps_per_epoch: int
    rank: int = 0
    world_size: int = 1
    after_step: Callable[[], None] | None = None  # e.g. update the weight average
    reduce_sum: ReduceSum | None = None  # sum a tensor over processes (None: single process)


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

    `should_stop(steps_done)` is asked after each checked step; when it says yes, StopTraining
    is raised with `totals` and the optimizer state at a step boundary. Returns the epoch's
    mean loss and accuracy. A non-finite loss raises PipelineError naming the step.
    """
    params = setup.params
    local_batch = params.batch_size // setup.world_size
    local_rows = slice(setup.rank * local_batch, (setup.rank + 1) * local_batch)
    order = epoch_permutation(len(setup.data), params.seed, epoch).to(setup.device)
    total_steps = params.epochs * setup.steps_per_epoch
    check_every = 1 if setup.device.type == "cpu" else 16  # each check syncs host and device
    pending: list[Tensor] = []
    pending_correct = torch.zeros((), dtype=torch.int64, device=setup.device)
    setup.model.train()
    started = time.perf_counter()

    def check(step: int) -> None:
        nonlocal pending, pending_correct
        losses = torch.stack(pending).float()
        sums = torch.stack([losses.sum(), pending_correct.float(), (~torch.isfinite(losses)).float().sum()])
        if setup.reduce_sum is not None:
            sums = setup.reduce_sum(sums)
        loss_sum, correct, non_finite = sums.tolist()
        if non_finite:
            # steps step-len+1 .. step are pending; name the first bad one (1-based; on another process
            # the window's first step)
            first = step - len(pending) + 1 + int(torch.argmax((~torch.isfinite(losses)).int()))
            raise PipelineError(
                f"loss became NaN or infinite at epoch {epoch + 1}, step {first + 1}; nothing was written"
            )
        totals.loss_sum += loss_sum * local_batch
        totals.correct += int(correct)
        totals.images += len(pending) * params.batch_size
        pending, pending_correct = [], torch.zeros_like(pending_correct)

    for step in range(start_step, setup.steps_per_epoch):
        global_step = epoch * setup.steps_per_epoch + step
        set_learning_rate(
            setup.optimizer,
            params.lr * learning_rate_factor(global_step, total_steps, params.schedule, params.warmup),
        )
        indices = order[step * params.batch_size : (step + 1) * params.batch_size][local_rows]
        draws = AugmentDraws.draw(
            params.batch_size, params.augment, step_generator(params.seed, epoch, step, setup.device)
        )
        draws = draws[local_rows]
        images = crop_and_flip(setup.data.images[indices], draws, params.augment)
        inputs = cutout(setup.transform(images), draws, params.augment.cutout)
        labels = setup.data.labels[indices]
        with autocast(setup.device, setup.precision):
            logits = setup.model(inputs)
            loss = functional.cross_entropy(logits.float(), labels, label_smoothing=params.label_smoothing)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        setup.optimizer.step()
        if setup.after_step is not None:
            setup.after_step()
        pending.append(loss.detach())
        pending_correct += (logits.argmax(1) == labels).sum()
        advance(1)
        done = step + 1
        if done % check_every == 0 or done == setup.steps_per_epoch:
            check(step)
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
