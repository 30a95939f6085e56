"""Test-set evaluation of a trained model file: metrics/eval.json and the confusion table."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data import load_split
from pipeline.engine import DeviceSplit, InputTransform, evaluate, resolve_device, resolve_precision
from pipeline.errors import PipelineError
from pipeline.metrics import confusion_csv, per_class_accuracy
from pipeline.params import EvaluateParams
from pipeline.weights import load_model


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, Any]  # metrics/eval.json
    confusion: str  # metrics/confusion.csv


def evaluate_model(model_path: Path, prepared: Path, params: EvaluateParams) -> EvaluationReport:
    """Accuracy, loss and per-class accuracy on the test split; with `tta`, also the TTA accuracy."""
    device = resolve_device(params.device)
    precision = resolve_precision("auto", device)
    model, card = load_model(model_path, device)
    test = load_split(prepared, "test")
    assert test is not None  # load_split raises for a missing test split
    data = DeviceSplit.from_split(test, device)
    transform = InputTransform.create(card.mean, card.std, card.normalize, device)
    started = time.perf_counter()
    plain = evaluate(
        model,
        data,
        transform,
        batch_size=params.batch_size,
        precision=precision,
        tta=params.tta,
        tta_translate=params.tta_translate,
    )
    metrics: dict[str, Any] = {
        "accuracy": plain.accuracy,
        "loss": plain.loss,
        "per_class": per_class_accuracy(plain.predictions, data.labels, card.classes),
    }
    if plain.tta_accuracy is not None:
        metrics["tta_accuracy"] = plain.tta_accuracy
    metrics |= {"images": plain.images, "seconds": time.perf_counter() - started}
    if not math.isfinite(plain.loss):
        raise PipelineError(f"{model_path}: the model gives non-finite logits; no metrics written")
    return EvaluationReport(metrics, confusion_csv(plain.predictions.cpu(), data.labels.cpu(), card.classes))
