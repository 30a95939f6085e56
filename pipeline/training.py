"""The training run, in four phases: set up data and model, resume, the epoch loop, the outcome.

A run can stop at any step boundary (SIGINT, SIGTERM) and continue later from its checkpoint
with bit-identical results on CPU: every random draw is a function of the seed and the
position, and the checkpoint holds all other state. Each run (params and data) has its own
checkpoint file, so a checkpoint of other params never blocks a run. Only the main process writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.checkpoint import Checkpoint, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from pipeline.checkpoint_folder import (
    Retention,
    checkpoint_path,
    describe_checkpoints,
    prune_checkpoints,
    remove_checkpoint,
)
from pipeline.compile_cache import compile_model, should_compile
from pipeline.cores import choose_threads, register_training
from pipeline.data import load_meta, load_split, prepared_digest
from pipeline.device import (
    DeviceSplit,
    InputTransform,
    configure_device,
    describe_cpu_choice,
    out_of_memory_hint,
    place_model,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from pipeline.distributed import Distributed
from pipeline.errors import PipelineError, TrainingInterrupted
from pipeline.hardware import cpu_class
from pipeline.inference import evaluate
from pipeline.model import build_model
from pipeline.model_card import ModelCard
from pipeline.optimizer import build_optimizer
from pipeline.params import ModelParams, TrainParams, trained_params, training_digest
from pipeline.progress import progress
from pipeline.source import code_digest
from pipeline.step import CudaGraphStep, WeightAverage, learning_rate_factor, should_capture
from pipeline.train_loop import EpochTotals, StopTraining, TrainSetup, build_train_step, train_one_epoch

logger = logging.getLogger(__name__)

History = list[dict[str, Any]]  # one metrics/train_log.tsv row per completed epoch
Report = Callable[[History, dict[str, Any]], None]  # called on the main process after every epoch


@dataclass(frozen=True)
class TrainOutcome:
    state: dict[str, Tensor]  # final weights (the weight average when train.ema > 0)
    card: ModelCard
    metrics: dict[str, Any]  # metrics/train.json
    history: History  # metrics/train_log.tsv, one row per epoch
    checkpoint: Path  # this run's checkpoint file: remove it once the outputs are written


@dataclass
class Progress:
    """Where a run stands; with the tensors, what a checkpoint holds."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed within `epoch`
    totals: EpochTotals = field(default_factory=EpochTotals)  # sums of the partial epoch
    history: History = field(default_factory=list)
    threads: int | None = None  # the CPU thread count of the checkpoint it resumes: the run keeps it


@dataclass(frozen=True)
class Run:
    """What a run sets up once: params, data, model, optimizer, and where it checkpoints."""

    model_params: ModelParams
    params: TrainParams
    meta: dict[str, Any]  # data/prepared/meta.json
    setup: TrainSetup  # what train_one_epoch needs (the model in it may be compiled and/or DDP)
    model: nn.Module  # the plain module that trains
    average: WeightAverage | None  # the weight average (EMA), when train.ema > 0
    val_data: DeviceSplit | None
    identity: dict[str, str]  # params_sha256, data_sha256 and code_sha256, stored in checkpoints
    checkpoint: Path  # this run's own checkpoint file
    distributed: Distributed | None
    retention: Retention | None  # how much the checkpoint folder keeps (None: everything)
    resume_hint: str  # what to run to resume, in the interrupt message
    compiled: bool  # whether torch.compile runs the model
    cpu_class: str | None  # the CPU's instruction-set class (pipeline.hardware), on the CPU

    @property
    def is_main(self) -> bool:
        return self.distributed is None or self.distributed.is_main

    @property
    def final_model(self) -> nn.Module:
        """The weights that are validated and saved: the average when there is one."""
        return self.average.module if self.average is not None else self.model


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
    checkpoints: Path,
    *,
    restart: bool = False,
    distributed: Distributed | None = None,
    report: Report | None = None,
    retention: Retention | None = None,
    resume_hint: str = "run `cifar10 train` again to resume",
    code_sha256: str | None = None,
) -> TrainOutcome | None:
    """Train, resuming from this run's checkpoint in the folder `checkpoints` when there is one.

    `code_sha256` names the training code in checkpoints (pipeline.source.code_digest of the
    command that trains; by default of this module), so weights trained by other code are never
    continued.

    `report(history, metrics)` is called on the main process after every epoch (and once
    after resuming), so progress can be written while training runs. Returns the outcome on
    the main process, None on the others. Raises TrainingInterrupted after saving a
    checkpoint on SIGINT/SIGTERM (its message ends with `resume_hint`), and PipelineError on a
    non-finite loss or out of memory. After each checkpoint, the folder is pruned to `retention`.
    """
    on_cpu = resolve_device(params.device).type == "cpu"
    # registered before the set-up (seconds on real data), so trainings started together see each other
    with register_training() if on_cpu else contextlib.nullcontext(None) as registration:
        code = code_sha256 or code_digest(Path(__file__))
        run = _set_up(model_params, params, prepared, checkpoints, distributed, code)
        run = dataclasses.replace(run, retention=retention, resume_hint=resume_hint)
        state = _resume(run, restart)
        threads = choose_threads(registration, torch.get_num_threads(), state.threads) if on_cpu else None
        with fixed_threads(threads):
            _train_epochs(run, state, report)
            return _outcome(run, state) if run.is_main else None


@contextlib.contextmanager
def fixed_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads at `count` for the block (None: unchanged), the previous count after."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- 1. data and model


def _set_up(
    model_params: ModelParams,
    params: TrainParams,
    prepared: Path,
    checkpoints: Path,
    distributed: Distributed | None,
    code_sha256: str,
) -> Run:
    rank, world_size = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    meta = load_meta(prepared)
    train_split, val_split = load_split(prepared, "train", meta), load_split(prepared, "val", meta)
    assert train_split is not None  # load_split raises for a missing train split
    if params.batch_size % world_size:  # under an external torchrun: nproc was not the check
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
    configure_device(device, params)

    seed_everything(params.seed)
    isa = cpu_class()
    model = build_model(model_params.arch, model_params.width, len(meta["classes"]))
    model = place_model(model, device, isa)
    if distributed and params.sync_bn:
        if device.type != "cuda":
            raise PipelineError("train.sync_bn: PyTorch's SyncBatchNorm works on CUDA devices only")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    optimizer = build_optimizer(model, params)
    average = WeightAverage(model, params.ema) if params.ema else None

    runner: nn.Module = model
    if distributed:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    compiled = should_compile(params.compile, device, model_params.arch, isa)
    if compiled:
        runner = compile_model(runner, device)

    identity = {
        "params_sha256": training_digest(model_params, params),
        "data_sha256": prepared_digest(meta),
        "code_sha256": code_sha256,
    }
    precision = resolve_precision(params.precision, device, isa)
    if device.type == "cpu" and (distributed is None or distributed.is_main):
        logger.info(describe_cpu_choice(params, precision, compiled, isa))
    transform = InputTransform.create(meta["mean"], meta["std"], params.normalize, device)
    step = build_train_step(
        runner,
        optimizer,
        transform,
        params,
        device=device,
        precision=precision,
        total_steps=params.epochs * steps_per_epoch,
        plain_model=model,
        average=average,
    )
    setup = TrainSetup(
        step=step,
        data=DeviceSplit.from_split(train_split, device),
        transform=transform,
        params=params,
        device=device,
        precision=precision,
        steps_per_epoch=steps_per_epoch,
        rank=rank,
        world_size=world_size,
        reduce_sum=distributed.reduce_sum if distributed else None,
        graph=CudaGraphStep(step)
        if should_capture(params.cuda_graphs, device, distributed is not None)
        else None,
    )
    return Run(
        model_params=model_params,
        params=params,
        meta=meta,
        setup=setup,
        model=model,
        average=average,
        val_data=DeviceSplit.from_split(val_split, device) if val_split is not None else None,
        identity=identity,
        checkpoint=checkpoint_path(checkpoints, **identity),
        distributed=distributed,
        retention=None,
        resume_hint="",
        compiled=compiled,
        cpu_class=isa if device.type == "cpu" else None,
    )


# ----------------------------------------------------------------------------- 2. resume


def _resume(run: Run, restart: bool) -> Progress:
    """This run's state from its checkpoint, or a fresh start; one log line says which."""
    path = run.checkpoint
    if restart:
        if run.is_main:
            remove_checkpoint(path)
            logger.info("--restart: training from the start")
        return Progress()
    if not path.exists():
        if run.is_main:
            logger.info("%s; training from the start", _no_checkpoint(run))
        return Progress()
    checkpoint = load_checkpoint(path)
    found = (checkpoint.params_sha256, checkpoint.data_sha256, checkpoint.code_sha256)
    if found != (run.identity["params_sha256"], run.identity["data_sha256"], run.identity["code_sha256"]):
        if run.is_main:  # a file put there by hand: it is overwritten at the next checkpoint
            logger.warning("%s holds another run (other params, data or code); training from the start", path)
        return Progress()
    run.model.load_state_dict(checkpoint.model)
    run.setup.step.optimizer.load_state_dict(checkpoint.optimizer)
    run.setup.step.learning_rate.attach()  # the device-side learning rate, where there is one
    if run.average is not None and checkpoint.average is not None:
        run.average.load_state_dict(checkpoint.average)
    restore_rng(checkpoint.rng)
    if run.is_main and checkpoint.epoch == run.params.epochs:  # kept until the model is written
        logger.info("resuming from %s after its last epoch: writing the outputs", path)
    elif run.is_main:
        logger.info("resuming from %s at epoch %d, step %d", path, checkpoint.epoch + 1, checkpoint.step)
    totals = EpochTotals(**checkpoint.totals)  # type: ignore[arg-type]
    # its thread count continues it bit for bit; with another number of processes nothing does
    same_processes = checkpoint.processes == run.setup.world_size
    threads = checkpoint.threads if same_processes else None
    return Progress(checkpoint.epoch, checkpoint.step, totals, checkpoint.history, threads)


def _no_checkpoint(run: Run) -> str:
    """Why nothing is resumed: no checkpoint of these params and data, or one trained by other code."""
    identity = run.identity
    others = [
        info
        for info in describe_checkpoints(run.checkpoint.parent)
        if (info.params_sha256, info.data_sha256) == (identity["params_sha256"], identity["data_sha256"])
    ]
    if not others:
        return f"no checkpoint for these params in {run.checkpoint.parent}"
    other = others[0]  # the newest
    return (
        f"{other.path} holds these params and data at epoch {(other.epoch or 0) + 1}, step {other.step}, "
        f"but was trained by other code (code {(other.code_sha256 or '?')[:8]}, this checkout's "
        f"{identity['code_sha256'][:8]}), so it is not resumed: check out that code to resume it "
        "(`cifar10 checkpoints` lists the code of each)"
    )


def _save_checkpoint(run: Run, state: Progress) -> None:
    if not run.is_main:
        return
    save_checkpoint(
        run.checkpoint,
        Checkpoint(
            epoch=state.epoch,
            step=state.step,
            totals=vars(state.totals).copy(),
            history=state.history,
            model=run.model.state_dict(),
            optimizer=run.setup.step.optimizer.state_dict(),
            average=run.average.state_dict() if run.average is not None else None,
            rng=capture_rng(),
            params=trained_params(run.model_params, run.params),
            threads=_cpu_threads(run),
            processes=run.setup.world_size,
            **run.identity,
        ),
    )
    if run.retention is not None:
        for removed in prune_checkpoints(run.checkpoint, run.retention):
            logger.info(
                "removed the checkpoint %s of another run (over the folder's age or size limit)", removed
            )


# ----------------------------------------------------------------------------- 3. the epoch loop


def _train_epochs(run: Run, state: Progress, report: Report | None) -> None:
    """Epochs from where `state` stands to the last; `state` moves along, checkpoints are saved."""
    params, setup = run.params, run.setup
    if report is not None and run.is_main and state.history:  # a resumed run shows its epochs at once
        report(state.history, _summary(run, state.history))

    with stop_on_signals() as stop:

        def should_stop(step: int) -> bool:
            requested = stop.signal_number is not None
            return run.distributed.any(requested, setup.device) if run.distributed else requested

        def interrupted() -> TrainingInterrupted:
            _save_checkpoint(run, state)
            number = stop.signal_number or signal.SIGTERM
            return TrainingInterrupted(
                f"interrupted by {signal.Signals(number).name} at epoch {state.epoch + 1}, step "
                f"{state.step}; checkpoint saved to {run.checkpoint}; {run.resume_hint}",
                number,
            )

        while state.epoch < params.epochs:
            try:
                with (
                    progress(f"epoch {state.epoch + 1}/{params.epochs}", setup.steps_per_epoch)
                    if run.is_main
                    else contextlib.nullcontext(lambda amount: None)
                ) as advance:
                    advance(state.step)
                    with out_of_memory_hint("train.batch_size", params.batch_size, setup.device):
                        result = train_one_epoch(
                            setup, state.epoch, state.totals, state.step, should_stop, advance
                        )
            except StopTraining:
                state.step = state.totals.images // params.batch_size
                raise interrupted() from None
            state.history.append(_epoch_row(run, state, result))
            state.epoch, state.step, state.totals = state.epoch + 1, 0, EpochTotals()
            if run.is_main:
                if report is not None:  # first, so the files are there when the line shows
                    report(state.history, _summary(run, state.history))
                logger.info(_format_row(state.history[-1]))
            if state.epoch < params.epochs:
                if should_stop(0):
                    raise interrupted()
                if params.checkpoint_every and state.epoch % params.checkpoint_every == 0:
                    _save_checkpoint(run, state)
            else:  # the final state, kept until the model is written: a run that fails at its end
                _save_checkpoint(run, state)  # (params changed meanwhile, a full disk) resumes there


def _epoch_row(run: Run, state: Progress, result: dict[str, float]) -> dict[str, Any]:
    """The train_log row of the epoch just trained, with the validation split scored."""
    params, setup = run.params, run.setup
    last_step = (state.epoch + 1) * setup.steps_per_epoch - 1
    total_steps = params.epochs * setup.steps_per_epoch
    row: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "lr": params.lr * learning_rate_factor(last_step, total_steps, params.schedule, params.warmup),
        "train_loss": result["loss"],
        "train_acc": result["accuracy"],
        "val_loss": None,
        "val_acc": None,
        "seconds": state.totals.seconds,
    }
    scored = (state.epoch + 1) % params.val_every == 0 or state.epoch + 1 == params.epochs
    if run.val_data is not None and scored:
        if run.distributed:  # score exactly the saved weights: rank 0's BatchNorm statistics and average
            run.distributed.broadcast_from_main(run.final_model)
        with out_of_memory_hint("train.val_batch_size", params.val_batch_size, setup.device):
            validation = evaluate(
                run.final_model,
                run.val_data,
                setup.transform,
                batch_size=params.val_batch_size,
                precision=setup.precision,
                rank=setup.rank,
                world_size=setup.world_size,
                reduce_sum=setup.reduce_sum,
            )
        row["val_loss"], row["val_acc"] = validation.loss, validation.accuracy
    return row


# ----------------------------------------------------------------------------- 4. the outcome


def _summary(run: Run, history: History) -> dict[str, Any]:
    """metrics/train.json after the epochs in `history`: the last epoch's figures and the speed."""
    last = history[-1]
    validated = [row for row in history if row["val_loss"] is not None]  # train.val_every may skip some
    seconds = sum(row["seconds"] for row in history)
    images = len(history) * run.setup.steps_per_epoch * run.params.batch_size
    return {
        "train_loss": last["train_loss"],
        "train_accuracy": last["train_acc"],
        **(
            {"val_loss": validated[-1]["val_loss"], "val_accuracy": validated[-1]["val_acc"]}
            if validated
            else {}
        ),
        "epoch": last["epoch"],  # epochs completed: less than `epochs` while training runs
        "epochs": run.params.epochs,
        "train_seconds": seconds,
        "images_per_second": images / seconds if seconds else 0.0,
        "device": run.setup.device.type,
        "precision": run.setup.precision,
        "processes": run.setup.world_size,
        "compiled": run.compiled,
        **({"cpu_class": run.cpu_class, "threads": _cpu_threads(run)} if run.cpu_class else {}),
    }


def _cpu_threads(run: Run) -> int | None:
    """The thread count a CPU run computes with: the weights' last bits depend on it."""
    return torch.get_num_threads() if run.setup.device.type == "cpu" else None


def _outcome(run: Run, state: Progress) -> TrainOutcome:
    card = ModelCard(
        arch=run.model_params.arch,
        width=run.model_params.width,
        classes=list(run.meta["classes"]),
        mean=list(run.meta["mean"]),
        std=list(run.meta["std"]),
        normalize=run.params.normalize,
        params_sha256=run.identity["params_sha256"],
        params=trained_params(run.model_params, run.params),
        data_sha256=run.identity["data_sha256"],
        torch_version=torch.__version__,
    )
    metrics = _summary(run, state.history)
    return TrainOutcome(run.final_model.state_dict(), card, metrics, state.history, run.checkpoint)
