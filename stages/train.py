"""`cifar10 train`: data/prepared -> models/model.safetensors, metrics/train.json, metrics/train_log.tsv,
reports/train.json."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    in_dvc_run,
    remove_orphans,
    run_as_script,
    say_how_to_record,
    stage_lock,
    user_errors,
)
from stages.paths import (
    MODEL,
    PREPARED,
    TRAIN_DETAILS,
    TRAIN_LOG,
    TRAIN_METRICS,
    checkpoint_limits,
    checkpoints_folder,
)

if TYPE_CHECKING:
    from pipeline.distributed import Distributed

logger = logging.getLogger(__name__)

Restart = Annotated[
    bool, typer.Option("--restart", help="Discard this run's checkpoint and train from scratch.")
]


def write_progress(run: StageRun, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The per-epoch log and the model's figures so far, rewritten atomically after every epoch;
    the first time, the outputs this run replaces are removed."""
    from pipeline.files import write_json, write_text
    from pipeline.metrics import split_train_summary, train_log_tsv

    run.replace_outputs()
    write_text(TRAIN_LOG, train_log_tsv(history))
    write_json(TRAIN_METRICS, split_train_summary(summary)[0])


def resume_hint() -> str:
    """What to run again after an interruption: the command that started this one."""
    if os.environ.get("DVC_EXP_NAME"):
        return "run the same `dvc exp run` again: it resumes from there in any workspace of this repository"
    if in_dvc_run():
        return "run `dvc repro` again to resume"
    return "run `cifar10 train` again to resume"


def command(
    params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None, restart: Restart = False
) -> None:
    """Train the model (params `model` and `train`); an interrupted run resumes from its checkpoint."""
    with user_errors():
        from pipeline import distributed

        context = distributed.from_environment()
        leads = distributed.holds_workspace_lock(context)
        if leads:
            remove_orphans("train")  # before anything can fail: see its docstring
        run = StageRun("train", params_file, overrides)
        params = run.params
        from pipeline.data import load_meta
        from pipeline.device import resolve_device
        from pipeline.errors import ParamsError
        from pipeline.gpu_lease import leased_gpus

        with (
            stage_lock("train") if leads else contextlib.nullcontext(),
            # a GPU of its own (nproc: as many), before CUDA initialises; under torchrun each
            # process keeps the device its local rank gives it
            leased_gpus(params.train.device, params.train.nproc)
            if context is None
            else contextlib.nullcontext(),
        ):
            if params.train.sync_bn and resolve_device(params.train.device).type != "cuda":
                raise ParamsError(  # before any worker starts: one line, not one per process
                    "train.sync_bn: PyTorch's SyncBatchNorm works on CUDA devices only "
                    f"(train.device {params.train.device} is {resolve_device(params.train.device).type} here)"
                )
            run.begin(write=leads)  # the other processes of the run read what it wrote
            load_meta(PREPARED, params.preprocess)  # data made with other preprocess params: refused now
            if context is None and params.train.nproc > 1:
                arguments = ["train", "--params", str(params_file)]  # the -S values are in it now
                distributed.launch(
                    params.train.nproc, arguments + (["--restart"] if restart else []), resume_hint()
                )
            else:
                train_in_this_process(run, context, restart)
        if leads:
            say_how_to_record("train")


def train_in_this_process(run: StageRun, context: Distributed | None, restart: bool) -> None:
    """Train (one process, or one worker of several) and write the outputs (the main process)."""
    from pipeline import distributed
    from pipeline.checkpoint_folder import Retention, remove_checkpoint
    from pipeline.device import resolve_device
    from pipeline.files import write_json
    from pipeline.metrics import split_train_summary
    from pipeline.source import code_digest
    from pipeline.training import train
    from pipeline.weights import save_model

    params = run.params
    if context is not None:
        distributed.quiet_unless_main(context)
        distributed.initialize(context, resolve_device(params.train.device).type)
    gigabytes, days = checkpoint_limits()
    try:
        outcome = train(
            params.model,
            params.train,
            PREPARED,
            checkpoints_folder(),
            restart=restart,
            distributed=context,
            report=functools.partial(write_progress, run),
            retention=Retention(int(gigabytes * 1e9), days * 86400),
            resume_hint=resume_hint(),
            code_sha256=code_digest(Path(__file__)),
        )
    finally:
        distributed.shutdown()
    if outcome is None:  # not the main process
        return
    with run.writing():  # the final state stays in its checkpoint until the model is written
        save_model(MODEL, outcome.state, outcome.card)  # the last epoch's report wrote the metrics
        write_json(TRAIN_DETAILS, split_train_summary(outcome.metrics)[1])
    remove_checkpoint(outcome.checkpoint)


if __name__ == "__main__":
    run_as_script(command)
