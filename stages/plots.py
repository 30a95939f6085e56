"""`cifar10 plots`: the run's pictures as PNG files in plots/, from the metrics and the test split."""

from __future__ import annotations

import logging

from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    run_as_script,
    stage_lock,
    user_errors,
)
from stages.model_check import check_model
from stages.paths import CONFUSION, PLOTS, PREPARED, TRAIN_LOG

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Draw learning curves, the test confusion matrix and the most confident mistakes (params
    `model` and `train` only to refuse the pictures of a model trained with other params)."""
    with user_errors():
        run = StageRun("plots", params_file, overrides)
        params = run.params
        from pipeline import plots
        from pipeline.data import load_meta, load_split

        with stage_lock("plots"):
            run.begin()
            check_model(params, str(params_file))
            meta = load_meta(PREPARED)
            predictions = plots.read_predictions(CONFUSION, meta["classes"])
            test = load_split(PREPARED, "test", meta)
            assert test is not None  # load_split raises for a missing test split
            log = plots.read_train_log(TRAIN_LOG)
            with run.writing():
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
