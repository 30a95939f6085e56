"""`cifar10 evaluate`: models/model.safetensors + test split -> metrics/eval.json, reports/eval.json,
metrics/confusion.csv."""

from __future__ import annotations

import logging

from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    remove_orphans,
    run_as_script,
    say_how_to_record,
    stage_lock,
    user_errors,
)
from stages.model_check import check_model
from stages.paths import CONFUSION, EVAL_DETAILS, EVAL_METRICS, MODEL, PREPARED

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Evaluate the trained model on the test split (params `evaluate`; `model` and `train` to
    refuse a model trained with other params)."""
    with user_errors():
        remove_orphans("evaluate")  # before anything can fail: see its docstring
        run = StageRun("evaluate", params_file, overrides)
        params = run.params
        from pipeline.data import load_meta
        from pipeline.evaluation import evaluate_model
        from pipeline.files import write_json, write_text
        from pipeline.metrics import EVAL_FIGURES, split_figures

        with stage_lock("evaluate"):
            run.begin()
            meta = load_meta(PREPARED, params.preprocess)  # data of other preprocess params: refused now
            check_model(params, str(params_file), meta)
            report = evaluate_model(MODEL, PREPARED, params.evaluate)
            figures, details = split_figures(report.metrics, EVAL_FIGURES)
            with run.writing():  # the figures first: while the others are missing, DVC records none
                write_json(EVAL_METRICS, figures)
                write_json(EVAL_DETAILS, details)
                write_text(CONFUSION, report.confusion)
        metrics = report.metrics
        interval = metrics["accuracy_ci95"]
        summary = f"test accuracy {metrics['accuracy']:.2%}"
        summary += f" (95% interval {interval['low']:.2%}-{interval['high']:.2%})"
        if "tta_accuracy" in metrics:
            summary += f", with TTA {metrics['tta_accuracy']:.2%}"
        logger.info(
            "%s on %d images, %s; wrote %s", summary, metrics["images"], metrics["precision"], EVAL_METRICS
        )
        say_how_to_record("evaluate")


if __name__ == "__main__":
    run_as_script(command)
