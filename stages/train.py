"""`cifar10 train`: data/prepared -> models/model.safetensors, metrics/train.json, metrics/train_log.tsv."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from stages.common import DEFAULT_PARAMS, Overrides, ParamsFile, read_params, stage_lock, user_errors
from stages.paths import CHECKPOINTS, MODEL, PREPARED, TRAIN_LOG, TRAIN_METRICS

Restart = Annotated[
    bool, typer.Option("--restart", help="Discard this run's checkpoint and train from scratch.")
]


def write_progress(history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """The per-epoch log and the metrics so far, rewritten atomically after every epoch."""
    from pipeline.files import write_json, write_text
    from pipeline.metrics import train_log_tsv

    write_text(TRAIN_LOG, train_log_tsv(history))
    write_json(TRAIN_METRICS, metrics)


def command(
    params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None, restart: Restart = False
) -> None:
    """Train the model (params `model` and `train`); an interrupted run resumes from its checkpoint."""
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline import distributed
        from pipeline.checkpoint import remove_checkpoint
        from pipeline.data import load_meta
        from pipeline.engine import resolve_device
        from pipeline.training import train
        from pipeline.weights import save_model

        context = distributed.from_environment()
        with stage_lock("train") if distributed.holds_workspace_lock(context) else contextlib.nullcontext():
            load_meta(PREPARED, params.preprocess)  # data made with other preprocess params: refused now
            if context is None and params.train.nproc > 1:
                arguments = [
                    "train",
                    "--params",
                    str(params_file),
                    *(f"--set={item}" for item in overrides or []),
                ]
                distributed.launch(params.train.nproc, arguments + (["--restart"] if restart else []))
                return
            if context is not None:
                distributed.quiet_unless_main(context)
                distributed.initialize(context, resolve_device(params.train.device).type)
            try:
                outcome = train(
                    params.model,
                    params.train,
                    PREPARED,
                    CHECKPOINTS,
                    restart=restart,
                    distributed=context,
                    report=write_progress,
                )
            finally:
                distributed.shutdown()
            if outcome is not None:
                save_model(MODEL, outcome.state, outcome.card)  # the last epoch's report wrote the metrics
                remove_checkpoint(outcome.checkpoint)
