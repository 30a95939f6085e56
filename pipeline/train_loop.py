"""The training loop: one epoch of steps over the split on the device (train_one_epoch), and the
step it repeats (build_train_step; the step itself, its learning rate, weight average and CUDA
graph replay are pipeline.step).

The data path has no per-image Python work: a split lives on the device as one uint8 tensor,
and each epoch is permuted and augmented in one pass (pipeline.augmentation). Every random draw
is a function of (seed, epoch), so a run resumed from a checkpoint, or spread over several
processes, sees exactly the same batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.augmentation import augment_epoch
from pipeline.device import DeviceSplit, InputTransform, Precision, ReduceSum, autocast
from pipeline.errors import PipelineError
from pipeline.params import TrainParams
from pipeline.step import CudaGraphStep, DeviceTotals, LearningRate, TrainStep, WeightAverage


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
