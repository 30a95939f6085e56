"""`cifar10 plots`: the run's pictures as PNG files in plots/, from the metrics and the test split."""

from __future__ import annotations

import logging

from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    read_params,
    run_as_script,
    stage_lock,
    user_errors,
)
from stages.paths import CONFUSION, MODEL, PLOTS, PREPARED, TRAIN_LOG

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Draw learning curves, the test confusion matrix and the most confident mistakes (params
    `model` and `train` only to refuse the pictures of a model trained with other params)."""
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline import plots
        from pipeline.data import load_meta, load_split
        from pipeline.model_card import check_trained_with, read_card

        with stage_lock("plots"):
            source = f"{params_file}{' with -S' if overrides else ''}"
            check_trained_with(read_card(MODEL), MODEL, params.model, params.train, source)
            meta = load_meta(PREPARED)
            predictions = plots.read_predictions(CONFUSION, meta["classes"])
            test = load_split(PREPARED, "test", meta)
            assert test is not None  # load_split raises for a missing test split
            log = plots.read_train_log(TRAIN_LOG)
            plots.save_picture(PLOTS / "learning_curves.png", plots.learning_curves, log)
            plots.save_picture(
                PLOTS / "confusion_matrix.png", plots.confusion_matrix, predictions, meta["classes"]
            )
            plots.save_picture(
                PLOTS / "confident_mistakes.png",
                plots.confident_mistakes,
                predictions,
                test.images,
                meta["classes"],
            )
        logger.info("wrote %s/learning_curves.png, confusion_matrix.png, confident_mistakes.png", PLOTS)


if __name__ == "__main__":
    run_as_script(command)
