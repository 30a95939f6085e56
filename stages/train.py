"""`cifar10 train`: data/prepared -> models/model.safetensors, metrics/train.json, metrics/train_log.tsv."""

from __future__ import annotations

from typing import Annotated

import typer

from stages.common import DEFAULT_PARAMS, Overrides, ParamsFile, read_params, user_errors
from stages.paths import CHECKPOINT, MODEL, PREPARED, TRAIN_LOG, TRAIN_METRICS

Restart = Annotated[bool, typer.Option("--restart", help="Discard models/checkpoint and train from scratch.")]


def command(
    params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None, restart: Restart = False
) -> None:
    """Train the model (params `model` and `train`); resumes from models/checkpoint after an interruption."""
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline import distributed
        from pipeline.checkpoint import remove_checkpoint
        from pipeline.engine import resolve_device
        from pipeline.files import write_json, write_text
        from pipeline.metrics import train_log_tsv
        from pipeline.training import train
        from pipeline.weights import save_model

        context = distributed.from_environment()
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
                params.model, params.train, PREPARED, CHECKPOINT, restart=restart, distributed=context
            )
        finally:
            distributed.shutdown()
        if outcome is not None:
            save_model(MODEL, outcome.state, outcome.card)
            write_text(TRAIN_LOG, train_log_tsv(outcome.history))
            write_json(TRAIN_METRICS, outcome.metrics)
            remove_checkpoint(CHECKPOINT)  # the folder stays: dvc.yaml declares it (persist: true)
