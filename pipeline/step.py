"""One training step, and the same step replayed as a CUDA graph.

A step reads a batch (uint8 images, cutout centres, labels), runs forward, loss, backward, the
optimizer and the weight average, and adds its loss and correct count to totals kept on the
device. Nothing in it reads a value back to the host, so on CUDA the whole step can be captured
once as a CUDA graph and replayed: per step the host then copies the next slice into the graph's
input buffers, writes the learning rate with one device copy, and launches the graph.

Capture needs a few warm-up steps (compilation, cuDNN's algorithm search, the optimizer's lazily
created state). They run on real weights, so everything a step changes is saved before them and
put back after: the run trains exactly as if they had never happened.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.augmentation import cutout
from pipeline.params import TrainParams

logger = logging.getLogger(__name__)

CAPTURE_WARMUP_STEPS = 3  # PyTorch's CUDA graph notes warm up 3 iterations on a side stream


# ----------------------------------------------------------------------------- learning rate


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


class LearningRate:
    """The schedule of a whole run, written into the optimizer before each step.

    On the host (`on_device=False`) each param group's lr is set to a float. On the device the
    whole schedule is one tensor and every group's lr is the same one-element tensor, so setting
    it is a single device-to-device copy with no host sync, and a captured step reads the
    current value.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: TrainParams,
        total_steps: int,
        *,
        device: torch.device,
        on_device: bool,
    ) -> None:
        self.optimizer = optimizer
        self.values = [
            params.lr * learning_rate_factor(step, total_steps, params.schedule, params.warmup)
            for step in range(total_steps)
        ]
        self.table: Tensor | None = None
        self.current: Tensor | None = None
        if on_device:
            self.table = torch.tensor(self.values, dtype=torch.float32, device=device)
            self.current = self.table[0].clone()
        self.attach()

    def attach(self) -> None:
        """Point the optimizer's groups at the device value (again after load_state_dict)."""
        if self.current is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.current

    def set(self, step: int) -> None:
        """The learning rate before optimizer step `step` (0-based, over the whole run)."""
        if self.table is not None and self.current is not None:
            self.current.copy_(self.table[step])
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.values[step]


# ----------------------------------------------------------------------------- weight average


class WeightAverage:
    """Exponential moving average of a model's weights and float buffers, updated after each step.

    The first update copies the weights; each later one moves the average (1 - decay) of the
    way towards them. Integer buffers (BatchNorm's step count) are copied. The update is made
    of device operations only (the update count is a device tensor), so it can be captured.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.updates = torch.zeros((), dtype=torch.int64, device=next(model.parameters()).device)

    @staticmethod
    def _split(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        tensors = [*model.parameters(), *model.buffers()]
        floats = [tensor.detach() for tensor in tensors if tensor.is_floating_point()]
        others = [tensor for tensor in tensors if not tensor.is_floating_point()]
        return floats, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        average_floats, average_others = self._split(self.module)
        model_floats, model_others = self._split(model)
        weight = torch.where(self.updates == 0, 1.0, 1.0 - self.decay)  # float32 scalar on the device
        differences = torch._foreach_sub(model_floats, average_floats)
        torch._foreach_mul_(differences, weight)
        torch._foreach_add_(average_floats, differences)
        for average, current in zip(average_others, model_others, strict=True):
            average.copy_(current)
        self.updates.add_(1)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **{f"module.{name}": t for name, t in self.module.state_dict().items()},
            "n_averaged": self.updates,
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(
            {name.removeprefix("module."): t for name, t in state.items() if name != "n_averaged"}
        )
        self.updates.copy_(state["n_averaged"])


# ----------------------------------------------------------------------------- totals on the device


class DeviceTotals:
    """Sums of the steps since they were last read, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)  # of each step's mean loss
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = torch.zeros((), dtype=torch.int64, device=device)
        self.first_non_finite = torch.full((), -1, dtype=torch.int64, device=device)  # step index, -1: none

    def tensors(self) -> list[Tensor]:
        return [self.loss_sum, self.correct, self.steps, self.first_non_finite]

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        bad = ~torch.isfinite(loss) & (self.first_non_finite < 0)
        self.first_non_finite.copy_(torch.where(bad, self.steps, self.first_non_finite))
        self.loss_sum.add_(loss)
        self.correct.add_((logits.argmax(1) == labels).sum())
        self.steps.add_(1)

    def take(self) -> Tensor:
        """float64 [loss_sum, correct, steps, first_non_finite] on the device; the sums restart at zero."""
        values = torch.stack([tensor.double() for tensor in self.tensors()])
        self.loss_sum.zero_()
        self.correct.zero_()
        self.steps.zero_()
        self.first_non_finite.fill_(-1)
        return values


# ----------------------------------------------------------------------------- the step


@dataclass
class TrainStep:
    """Forward, loss, backward, optimizer and weight average for one batch; device work only."""

    model: nn.Module  # what runs forward and backward (maybe compiled and/or DistributedDataParallel)
    plain_model: nn.Module  # the module whose weights the average follows
    optimizer: torch.optim.Optimizer
    learning_rate: LearningRate
    transform: Callable[[Tensor], Tensor]  # uint8 images -> normalised float inputs
    params: TrainParams
    autocast: Callable[[], contextlib.AbstractContextManager[None]]  # the run's precision
    totals: DeviceTotals
    average: WeightAverage | None = None

    def __call__(self, images: Tensor, centres: Tensor, labels: Tensor) -> None:
        inputs = cutout(self.transform(images), centres, self.params.augment.cutout)
        with self.autocast():
            logits = self.model(inputs)
            loss = functional.cross_entropy(
                logits.float(), labels, label_smoothing=self.params.label_smoothing
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.plain_model)
        self.totals.add(loss.detach(), logits.detach(), labels)


class CudaGraphStep:
    """A TrainStep captured as one CUDA graph at its first call, then replayed.

    If capture fails, one warning names the reason and every step runs uncaptured, with the
    same state as if capture had never been tried.
    """

    def __init__(self, step: TrainStep) -> None:
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self.failed = False

    def __call__(self, images: Tensor, centres: Tensor, labels: Tensor) -> None:
        if self.graph is None and not self.failed:
            try:
                self._capture(images, centres, labels)
            except Exception as error:  # any failure: fall back, never crash
                self.failed, self.graph, self.inputs = True, None, None
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                logger.warning(
                    "train.cuda_graphs: capture failed (%s%s); training continues uncaptured",
                    type(error).__name__,
                    f": {reason}" if reason else "",
                )
        if self.graph is None or self.inputs is None:
            self.step(images, centres, labels)
            return
        for buffer, value in zip(self.inputs, (images, centres, labels), strict=True):
            buffer.copy_(value)
        self.graph.replay()

    def _capture(self, images: Tensor, centres: Tensor, labels: Tensor) -> None:
        started = time.perf_counter()
        saved = _StepState.save(self.step)
        try:
            inputs = (images.clone(memory_format=torch.preserve_format), centres.clone(), labels.clone())
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(CAPTURE_WARMUP_STEPS):
                    self.step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            warmed_up = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            self.step.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.step(*inputs)
        finally:
            saved.restore(self.step)  # capture records without running: only the warm-up changed state
        self.graph, self.inputs = graph, inputs
        # Host seconds: what the first epoch spends before its first replay (docs/performance.md, On one GPU).
        logger.info(
            "train.cuda_graphs: step captured in %.1f s (%d warm-up steps, compilation included: %.1f s)",
            time.perf_counter() - started,
            CAPTURE_WARMUP_STEPS,
            warmed_up - started,
        )


@dataclass
class _StepState:
    """Copies of everything a step changes: weights, buffers, optimizer state, average, totals."""

    tensors: list[Tensor]  # the live tensors
    copies: list[Tensor]  # their values before warm-up
    stateless: list[nn.Parameter]  # parameters that had no optimizer state yet

    @classmethod
    def save(cls, step: TrainStep) -> _StepState:
        live = [*step.plain_model.parameters(), *step.plain_model.buffers(), *step.totals.tensors()]
        if step.average is not None:
            live += [*step.average.module.parameters(), *step.average.module.buffers(), step.average.updates]
        stateless = []
        for group in step.optimizer.param_groups:
            for parameter in group["params"]:
                state = step.optimizer.state.get(parameter)
                if not state:
                    stateless.append(parameter)
                    continue
                live += [value for value in state.values() if isinstance(value, Tensor)]
        return cls(live, [tensor.detach().clone() for tensor in live], stateless)

    @torch.no_grad()
    def restore(self, step: TrainStep) -> None:
        for tensor, saved in zip(self.tensors, self.copies, strict=True):
            tensor.copy_(saved)
        # State created by the warm-up (momentum buffers, Adam's moments and step count) is
        # zeroed: for SGD and Adam a zero state updates exactly as a missing one.
        for parameter in self.stateless:
            for value in step.optimizer.state.get(parameter, {}).values():
                if isinstance(value, Tensor):
                    value.zero_()


def should_capture(setting: str | bool, device: torch.device, data_parallel: bool) -> bool:
    """`auto`: on for CUDA without DistributedDataParallel. DDP steps are not captured (its
    gradient buckets and collectives need their own capture setup), nor steps on other devices;
    an explicit `true` there says so in one warning line and trains uncaptured."""
    if setting is False:
        return False
    reason = None
    if device.type != "cuda":
        reason = f"CUDA graphs need a CUDA device, not {device.type}"
    elif data_parallel:
        reason = "DistributedDataParallel steps (torchrun, train.nproc > 1) are not captured"
    if reason is None:
        return True
    if setting is True:
        logger.warning("train.cuda_graphs: %s; training uncaptured", reason)
    return False
