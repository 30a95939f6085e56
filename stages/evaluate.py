"""`cifar10 evaluate`: models/model.safetensors + test split -> metrics/eval.json, metrics/confusion.csv."""

from __future__ import annotations

import logging

from stages.common import DEFAULT_PARAMS, Overrides, ParamsFile, read_params, user_errors
from stages.paths import CONFUSION, EVAL_METRICS, MODEL, PREPARED

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Evaluate the trained model on the test split (params `evaluate`)."""
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline.evaluation import evaluate_model
        from pipeline.files import write_json, write_text

        report = evaluate_model(MODEL, PREPARED, params.evaluate)
        write_text(CONFUSION, report.confusion)
        write_json(EVAL_METRICS, report.metrics)
        summary = f"test accuracy {report.metrics['accuracy']:.2%}"
        if "tta_accuracy" in report.metrics:
            summary += f", with TTA {report.metrics['tta_accuracy']:.2%}"
        logger.info("%s on %d images; wrote %s", summary, report.metrics["images"], EVAL_METRICS)
