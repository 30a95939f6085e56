"""The check of evaluate, plots and predict that the repository's model is that of their params."""

from __future__ import annotations

from pipeline.model_card import check_trained_with, read_card
from pipeline.params import Params
from stages.common import in_dvc_run
from stages.paths import MODEL


def check_model(params: Params, source: str) -> None:
    """Refuse models/model.safetensors if it was not trained with these model and train params,
    naming the way to the right one."""
    if in_dvc_run():
        remedy = (
            "if DVC restored it from its run-cache (`Stage 'train' is cached`), that entry was recorded "
            "while params.yaml changed during a run: `dvc repro --force --downstream train` trains the "
            "model for these params, evaluates it and records a right entry"
        )
    else:
        remedy = "train it for these params: `dvc repro` (or `cifar10 train`)"
    check_trained_with(read_card(MODEL), MODEL, params.model, params.train, source, remedy)
