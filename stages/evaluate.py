"""`cifar10 evaluate`: models/model.safetensors + test split -> metrics/eval.json, metrics/confusion.csv."""

from __future__ import annotations

import logging

from stages.common import DEFAULT_PARAMS, Overrides, ParamsFile, read_params, stage_lock, user_errors
from stages.paths import CONFUSION, EVAL_METRICS, MODEL, PREPARED

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Evaluate the trained model on the test split (params `evaluate`)."""
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline.data import load_meta
        from pipeline.evaluation import evaluate_model
        from pipeline.files import write_json, write_text

        with stage_lock("evaluate"):
            load_meta(PREPARED, params.preprocess)  # data made with other preprocess params: refused now
            report = evaluate_model(MODEL, PREPARED, params.evaluate)
            write_text(CONFUSION, report.confusion)
            write_json(EVAL_METRICS, report.metrics)
        metrics = report.metrics
        interval = metrics["accuracy_ci95"]
        summary = f"test accuracy {metrics['accuracy']:.2%}"
        summary += f" (95% interval {interval['low']:.2%}-{interval['high']:.2%})"
        if "tta_accuracy" in metrics:
            summary += f", with TTA {metrics['tta_accuracy']:.2%}"
        logger.info(
            "%s on %d images, %s; wrote %s", summary, metrics["images"], metrics["precision"], EVAL_METRICS
        )
