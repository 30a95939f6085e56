"""The training run: data, model, optimizer and the epoch loop, with checkpoints and resume.

A run can stop at any step boundary (SIGINT, SIGTERM) and continue later from
models/checkpoint with bit-identical results on CPU: every random draw is a function of the
seed and the position, and the checkpoint holds all other state. Only the main process writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    remove_checkpoint,
    restore_rng,
    save_checkpoint,
)
from pipeline.data import load_meta, load_split
from pipeline.distributed import Distributed
from pipeline.engine import (
    DeviceSplit,
    EpochTotals,
    InputTransform,
    StopTraining,
    TrainSetup,
    build_optimizer,
    evaluate,
    learning_rate_factor,
    place_model,
    resolve_device,
    resolve_precision,
    seed_everything,
    train_one_epoch,
)
from pipeline.errors import ModelFileError, PipelineError, TrainingInterrupted
from pipeline.model import build_model
from pipeline.params import ModelParams, TrainParams, training_digest
from pipeline.progress import progress
from pipeline.weights import ModelCard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    state: dict[str, Tensor]  # final weights (the weight average when train.ema > 0)
    card: ModelCard
    metrics: dict[str, Any]  # metrics/train.json
    history: list[dict[str, Any]]  # metrics/train_log.tsv, one row per epoch


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop checkpoints at the next step boundary. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    request = StopRequest()
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, request.handle) for number in watched}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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


def data_digest(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def should_compile(setting: str | bool, device: torch.device) -> bool:
    """`auto`: on for CUDA, and on the CPU where Inductor finds its C++ compiler.

    On the 2-core CPU of benchmarks/README.md, compiling fuses BatchNorm, ReLU and the residual
    sums and trains ResNet-18 1.3-1.5x faster than eager after a one-time compile of ~30-60 s.
    """
    if setting != "auto":
        return bool(setting)
    if device.type == "cpu":
        return shutil.which(os.environ.get("CXX", "g++")) is not None
    return device.type == "cuda"


def _format_row(row: dict[str, Any]) -> str:
    text = f"epoch {row['epoch']}  lr {row['lr']:.4g}"
    text += f"  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"
    if row.get("val_loss") is not None:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
    return text + f"  {row['seconds']:.1f} s"


def train(
    model_params: ModelParams,
    params: TrainParams,
    prepared: Path,
    checkpoint_path: Path,
    *,
    restart: bool = False,
    distributed: Distributed | None = None,
) -> TrainOutcome | None:
    """Train, resuming from `checkpoint_path` when it holds a run with the same params and data.

    Returns the outcome on the main process, None on the others. Raises TrainingInterrupted
    after saving a checkpoint on SIGINT/SIGTERM, and PipelineError on a non-finite loss.
    """
    rank, world_size = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    is_main = rank == 0
    meta = load_meta(prepared)
    train_split, val_split = load_split(prepared, "train"), load_split(prepared, "val")
    assert train_split is not None  # load_split raises for a missing train split
    if params.batch_size % world_size:
        raise PipelineError(
            f"train.batch_size: {params.batch_size} is not divisible by {world_size} processes"
        )
    steps_per_epoch = len(train_split) // params.batch_size  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise PipelineError(
            f"train.batch_size: {params.batch_size} is larger than the {len(train_split)} training images"
        )

    device = resolve_device(params.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    precision = resolve_precision(params.precision, device)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    identity = {"params_sha256": training_digest(model_params, params), "data_sha256": data_digest(meta)}

    seed_everything(params.seed)
    model = build_model(model_params.arch, model_params.width, len(meta["classes"]))
    model = place_model(model, device)
    if distributed and params.sync_bn:
        if device.type != "cuda":
            raise PipelineError("train.sync_bn: PyTorch's SyncBatchNorm works on CUDA devices only")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    optimizer = build_optimizer(model, params)
    average = None
    if params.ema:
        exponential = get_ema_multi_avg_fn(params.ema)  # type: ignore[no-untyped-call]
        average = AveragedModel(model, multi_avg_fn=exponential, use_buffers=True)

    start_epoch, start_step, totals, history = 0, 0, EpochTotals(), []
    if restart:
        if is_main:
            remove_checkpoint(checkpoint_path)
    elif checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path)
        for key, value in identity.items():
            if getattr(checkpoint, key) != value:
                what = "params" if key == "params_sha256" else "data"
                raise ModelFileError(
                    f"{checkpoint_path} was written for other {what}; "
                    "run `cifar10 train --restart` to discard it and start over"
                )
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        if average is not None and checkpoint.average is not None:
            average.load_state_dict(checkpoint.average)
        restore_rng(checkpoint.rng)
        start_epoch, start_step, history = checkpoint.epoch, checkpoint.step, checkpoint.history
        totals = EpochTotals(**checkpoint.totals)  # type: ignore[arg-type]
        if is_main:
            logger.info("resuming from %s at epoch %d, step %d", checkpoint_path, start_epoch + 1, start_step)

    runner: nn.Module = model
    if distributed:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if should_compile(params.compile, device):
        runner = torch.compile(runner)  # type: ignore[assignment]

    data = DeviceSplit.from_split(train_split, device)
    val_data = DeviceSplit.from_split(val_split, device) if val_split is not None else None
    transform = InputTransform.create(meta["mean"], meta["std"], params.normalize, device)
    reduce_sum = distributed.reduce_sum if distributed else None
    setup = TrainSetup(
        model=runner,
        optimizer=optimizer,
        data=data,
        transform=transform,
        params=params,
        device=device,
        precision=precision,
        steps_per_epoch=steps_per_epoch,
        rank=rank,
        world_size=world_size,
        after_step=(lambda: average.update_parameters(model)) if average is not None else None,
        reduce_sum=reduce_sum,
    )
    final_model: nn.Module = average.module if average is not None else model
    total_steps = params.epochs * steps_per_epoch

    def checkpoint_now(epoch: int, step: int) -> None:
        if not is_main:
            return
        save_checkpoint(
            checkpoint_path,
            Checkpoint(
                epoch=epoch,
                step=step,
                totals=vars(totals).copy(),
                history=history,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                average=average.state_dict() if average is not None else None,
                rng=capture_rng(),
                **identity,
            ),
        )

    with stop_on_signals() as stop:

        def should_stop(step: int) -> bool:
            requested = stop.signal_number is not None
            return distributed.any(requested, device) if distributed else requested

        def interrupted(epoch: int, step: int) -> TrainingInterrupted:
            checkpoint_now(epoch, step)
            number = stop.signal_number or signal.SIGTERM
            return TrainingInterrupted(
                f"interrupted by {signal.Signals(number).name} at epoch {epoch + 1}, step {step}; "
                f"checkpoint saved to {checkpoint_path.parent}; run `cifar10 train` again to resume",
                number,
            )

        for epoch in range(start_epoch, params.epochs):
            try:
                with (
                    progress(f"epoch {epoch + 1}/{params.epochs}", steps_per_epoch)
                    if is_main
                    else (contextlib.nullcontext(lambda amount: None)) as advance
                ):
                    advance(start_step)
                    result = train_one_epoch(setup, epoch, totals, start_step, should_stop, advance)
            except StopTraining:
                raise interrupted(epoch, totals.images // params.batch_size) from None
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": params.lr
                * learning_rate_factor(
                    (epoch + 1) * steps_per_epoch - 1, total_steps, params.schedule, params.warmup
                ),
                "train_loss": result["loss"],
                "train_acc": result["accuracy"],
                "val_loss": None,
                "val_acc": None,
                "seconds": totals.seconds,
            }
            if val_data is not None:
                evaluation = evaluate(
                    final_model,
                    val_data,
                    transform,
                    batch_size=max(params.batch_size, 500),
                    precision=precision,
                    rank=rank,
                    world_size=world_size,
                    reduce_sum=reduce_sum,
                )
                row["val_loss"], row["val_acc"] = evaluation.loss, evaluation.accuracy
            history.append(row)
            if is_main:
                logger.info(_format_row(row))
            start_step, totals = 0, EpochTotals()
            if epoch + 1 < params.epochs:
                if should_stop(0):
                    raise interrupted(epoch + 1, 0)
                if params.checkpoint_every and (epoch + 1) % params.checkpoint_every == 0:
                    checkpoint_now(epoch + 1, 0)

    if not is_main:
        return None
    train_seconds = sum(row["seconds"] for row in history)
    images = params.epochs * steps_per_epoch * params.batch_size
    last = history[-1]
    metrics = {
        "train_loss": last["train_loss"],
        "train_accuracy": last["train_acc"],
        **(
            {"val_loss": last["val_loss"], "val_accuracy": last["val_acc"]}
            if last["val_loss"] is not None
            else {}
        ),
        "epochs": params.epochs,
        "train_seconds": train_seconds,
        "images_per_second": images / train_seconds if train_seconds else 0.0,
        "device": device.type,
        "precision": precision,
        "processes": world_size,
    }
    card = ModelCard(
        arch=model_params.arch,
        width=model_params.width,
        classes=list(meta["classes"]),
        mean=list(meta["mean"]),
        std=list(meta["std"]),
        normalize=params.normalize,
        params_sha256=identity["params_sha256"],
        torch_version=torch.__version__,
    )
    return TrainOutcome(final_model.state_dict(), card, metrics, history)
