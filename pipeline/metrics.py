"""Metrics files DVC can diff and plot: JSON metrics, the per-epoch log and the confusion table."""

from __future__ import annotations

import csv
import io
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


def confusion_csv(predictions: Tensor, labels: Tensor, classes: Sequence[str]) -> str:
    """`actual,predicted` with class names, one row per image: the input of DVC's confusion template."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("actual", "predicted"))
    writer.writerows(
        (classes[actual], classes[predicted])
        for actual, predicted in zip(labels.tolist(), predictions.tolist(), strict=True)
    )
    return buffer.getvalue()


def train_log_tsv(history: Sequence[dict[str, Any]]) -> str:
    """One row per epoch; val columns are empty when there is no validation split."""
    lines = ["\t".join(TRAIN_LOG_COLUMNS)]
    for row in history:
        cells = ["" if row.get(column) is None else f"{row[column]:.6g}" for column in TRAIN_LOG_COLUMNS]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"
