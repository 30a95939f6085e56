"""`cifar10 plots`: the run's pictures as PNG files in plots/, from the metrics and the test split."""

from __future__ import annotations

import functools
import logging

from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    run_as_script,
    say_how_to_record,
    stage_lock,
    user_errors,
)
from stages.model_check import check_model, check_predictions
from stages.paths import CONFUSION, MODEL, PLOTS, PREPARED, TRAIN_LOG

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Draw learning curves, the test confusion matrix and the most confident mistakes (params
    `model` and `train` only to refuse the pictures of a model trained with other params)."""
    with user_errors():
        run = StageRun("plots", params_file, overrides)
        params = run.params
        from pipeline import plots
        from pipeline.data import load_meta, load_split, prepared_digest
        from pipeline.files import sha256_file, write_bytes

        with stage_lock("plots"):
            run.begin()
            meta = load_meta(PREPARED)
            check_model(params, str(params_file), meta)
            check_predictions()
            predictions = plots.read_predictions(CONFUSION, meta["classes"])
            test = load_split(PREPARED, "test", meta)
            assert test is not None  # load_split raises for a missing test split
            log = plots.read_train_log(TRAIN_LOG)
            made_from = {  # in each picture: what it was drawn from
                "model_sha256": sha256_file(MODEL),
                "train_log_sha256": sha256_file(TRAIN_LOG),
                "confusion_sha256": sha256_file(CONFUSION),
                "data_sha256": prepared_digest(meta),
            }
            pictures = {
                PLOTS / "learning_curves.png": functools.partial(plots.learning_curves, log),
                PLOTS / "confusion_matrix.png": functools.partial(
                    plots.confusion_matrix, predictions, meta["classes"]
                ),
                PLOTS / "confident_mistakes.png": functools.partial(
                    plots.confident_mistakes, predictions, test.images, meta["classes"]
                ),
            }
            drawn = {path: plots.draw_picture(path, draw, made_from) for path, draw in pictures.items()}
            with run.writing():
                for path, data in drawn.items():
                    write_bytes(path, data)
        logger.info("wrote %s/learning_curves.png, confusion_matrix.png, confident_mistakes.png", PLOTS)
        say_how_to_record("plots")


if __name__ == "__main__":
    run_as_script(command)
