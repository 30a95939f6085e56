"""Metrics files DVC can diff and plot: JSON metrics, the per-epoch log and the confusion table."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

TRAIN_LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


def per_class_accuracy(predictions: Tensor, labels: Tensor, classes: Sequence[str]) -> dict[str, float]:
    correct = torch.bincount(labels[predictions == labels], minlength=len(classes)).tolist()
    totals = torch.bincount(labels, minlength=len(classes)).tolist()
    return {
        name: (hits / total if total else 0.0)
        for name, hits, total in zip(classes, correct, totals, strict=True)
    }


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> dict[str, float]:
    """The Wilson score interval of a proportion, 95% by default (z: the normal quantile).

    Unlike the normal approximation it stays inside [0, 1] and is honest near 0 and 1. At 90%
    on 10,000 test images it is about +-0.6 points.
    """
    if total == 0:
        return {"low": 0.0, "high": 1.0}
    share = correct / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    low = 0.0 if correct == 0 else centre - half  # exact bounds at the ends, not 1 - 1e-16
    high = 1.0 if correct == total else centre + half
    return {"low": low, "high": high}


CONFUSION_COLUMNS = ("image", "actual", "predicted", "confidence")


def confusion_csv(predictions: Tensor, confidences: Tensor, labels: Tensor, classes: Sequence[str]) -> str:
    """One row per test image: its index, true and predicted class names, and the predicted
    class's probability. `actual` and `predicted` feed DVC's confusion template; `confidence`
    picks the most confident mistakes for the plots stage."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CONFUSION_COLUMNS)
    writer.writerows(
        (index, classes[actual], classes[predicted], f"{confidence:.4f}")
        for index, (actual, predicted, confidence) in enumerate(
            zip(labels.tolist(), predictions.tolist(), confidences.tolist(), strict=True)
        )
    )
    return buffer.getvalue()


def train_log_tsv(history: Sequence[dict[str, Any]]) -> str:
    """One row per epoch; val columns are empty when there is no validation split."""
    lines = ["\t".join(TRAIN_LOG_COLUMNS)]
    for row in history:
        cells = ["" if row.get(column) is None else f"{row[column]:.6g}" for column in TRAIN_LOG_COLUMNS]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


# The figures that describe a model: what metrics/*.json (and so `dvc exp show`, `dvc metrics diff`)
# hold. Timing, device and the like change with every run and go to reports/ instead.
TRAIN_FIGURES = ("val_accuracy", "epoch")  # epoch: epochs done, so a running experiment shows its progress
EVAL_FIGURES = ("accuracy", "tta_accuracy", "loss")


def split_figures(summary: dict[str, Any], figures: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the model's figures, the rest) of a summary."""
    return (
        {key: summary[key] for key in figures if key in summary},
        {key: value for key, value in summary.items() if key not in figures},
    )


def split_train_summary(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return split_figures(summary, TRAIN_FIGURES)
