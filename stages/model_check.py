"""The checks of evaluate, plots and predict that the repository's model is that of their params,
and of evaluate and plots that their inputs were made from each other."""

from __future__ import annotations

import json
from typing import Any

from pipeline.errors import PipelineError
from pipeline.model_card import check_trained_with, read_card
from pipeline.params import Params
from stages.common import in_dvc_run
from stages.paths import EVAL_DETAILS, MODEL, PREPARED


def check_model(params: Params, source: str, meta: dict[str, Any] | None = None) -> None:
    """Refuse models/model.safetensors if it was not trained with these model and train params
    (or, given data/prepared's `meta`, on other data), naming the way to the right one."""
    from pipeline.data import prepared_digest

    if in_dvc_run():
        remedy = (
            "if DVC restored it from its run-cache (`Stage 'train' is cached`), that entry was recorded "
            "while params.yaml changed during a run: `dvc repro --force --downstream train` trains the "
            "model for these params, evaluates it and records a right entry"
        )
    else:
        remedy = "train it for these params: `dvc repro` (or `cifar10 train`)"
    card = read_card(MODEL)
    check_trained_with(card, MODEL, params.model, params.train, source, remedy)
    if meta is not None and card.data_sha256 not in (None, prepared_digest(meta)):  # None: an older model
        raise PipelineError(f"{MODEL} was trained on other data than {PREPARED} holds; {remedy}")


def check_predictions() -> None:
    """Refuse evaluate's outputs (metrics/confusion.csv) if they are not of the model on disk:
    reports/eval.json names the model they were made from."""
    from pipeline.files import sha256_file

    try:
        made_from = json.loads(EVAL_DETAILS.read_text())["made_from"]
    except (OSError, ValueError, KeyError, TypeError):
        made_from = {}
    if made_from.get("model_sha256") != sha256_file(MODEL):
        raise PipelineError(
            f"the test predictions are not of {MODEL} ({EVAL_DETAILS} names another model, or none); "
            "evaluate it first: `dvc repro` (or `cifar10 evaluate`)"
        )
