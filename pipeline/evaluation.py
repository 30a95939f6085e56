"""Test-set evaluation of a trained model file: metrics/eval.json and the confusion table."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data import load_meta, load_split, prepared_digest
from pipeline.device import DeviceSplit, InputTransform, out_of_memory_hint, resolve_device, resolve_precision
from pipeline.errors import PipelineError
from pipeline.files import sha256_file
from pipeline.inference import evaluate
from pipeline.metrics import confusion_csv, per_class_accuracy, wilson_interval
from pipeline.params import EvaluateParams
from pipeline.weights import load_model


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, Any]  # metrics/eval.json
    confusion: str  # metrics/confusion.csv


def evaluate_model(model_path: Path, prepared: Path, params: EvaluateParams) -> EvaluationReport:
    """Accuracy (with its 95% interval), loss and per-class accuracy on the test split; with
    `tta`, also the TTA accuracy. `made_from` names the model file and the prepared data by
    their SHA-256: the report is of exactly these."""
    device = resolve_device(params.device)
    precision = resolve_precision(params.precision, device)
    made_from = {"model_sha256": sha256_file(model_path)}  # read before the weights: the stage's lock
    model, card = load_model(model_path, device)
    meta = load_meta(prepared)
    made_from["data_sha256"] = prepared_digest(meta)
    test = load_split(prepared, "test", meta)
    assert test is not None  # load_split raises for a missing test split
    data = DeviceSplit.from_split(test, device)
    transform = InputTransform.create(card.mean, card.std, card.normalize, device)
    started = time.perf_counter()
    with out_of_memory_hint("evaluate.batch_size", params.batch_size, device):
        result = evaluate(
            model,
            data,
            transform,
            batch_size=params.batch_size,
            precision=precision,
            tta=params.tta,
            tta_translate=params.tta_translate,
        )
    if not math.isfinite(result.loss):
        raise PipelineError(f"{model_path}: the model gives non-finite logits; no metrics written")
    metrics: dict[str, Any] = {
        "accuracy": result.accuracy,
        "accuracy_ci95": wilson_interval(round(result.accuracy * result.images), result.images),
        "loss": result.loss,
        "per_class": per_class_accuracy(result.predictions, data.labels, card.classes),
    }
    if result.tta_accuracy is not None:
        metrics["tta_accuracy"] = result.tta_accuracy
        metrics["tta_accuracy_ci95"] = wilson_interval(
            round(result.tta_accuracy * result.images), result.images
        )
    metrics |= {
        "images": result.images,
        "precision": precision,
        "seconds": time.perf_counter() - started,
        "made_from": made_from,
    }
    confusion = confusion_csv(
        result.predictions.cpu(), result.confidences.cpu(), data.labels.cpu(), card.classes
    )
    return EvaluationReport(metrics, confusion)
