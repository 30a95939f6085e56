"""Pictures of a run, as PNG files: learning curves, the confusion matrix, the most confident mistakes.

Drawn with matplotlib's object-oriented API on its Agg canvas, never through pyplot, so no
display or GUI backend is involved. Each picture is rendered in memory, with the SHA-256 of the
files it was drawn from in a PNG text chunk (`read_made_from`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from pipeline.errors import PipelineError

METADATA_KEY = "cifar10"  # the PNG text chunk that names the inputs, as in the model file
MISTAKES_SHOWN = 24  # images in the grid of the most confidently misclassified test images


@dataclass(frozen=True)
class Predictions:
    """metrics/confusion.csv: one row per test image."""

    image: np.ndarray  # int64 [N]: index in the test split
    actual: np.ndarray  # int64 [N]: class index
    predicted: np.ndarray  # int64 [N]
    confidence: np.ndarray  # float64 [N]: probability of the predicted class


def read_train_log(path: Path) -> dict[str, np.ndarray]:
    """Columns of metrics/train_log.tsv as float arrays; empty cells (no validation split) are NaN."""
    rows = _read_table(path, "\t")
    return {column: np.array([float(row[column] or "nan") for row in rows]) for column in rows[0]}


def read_predictions(path: Path, classes: Sequence[str]) -> Predictions:
    rows = _read_table(path, ",")
    index = {name: number for number, name in enumerate(classes)}
    try:
        return Predictions(
            np.array([int(row["image"]) for row in rows]),
            np.array([index[row["actual"]] for row in rows]),
            np.array([index[row["predicted"]] for row in rows]),
            np.array([float(row["confidence"]) for row in rows]),
        )
    except (KeyError, ValueError) as error:
        raise PipelineError(f"{path}: unexpected content ({error}); run `cifar10 evaluate` again") from None


def _read_table(path: Path, delimiter: str) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter=delimiter))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the stage that writes it first)") from None
    if not rows:
        raise PipelineError(f"{path}: no rows")
    return rows


def learning_curves(log: dict[str, np.ndarray]) -> Figure:
    """Loss and accuracy per epoch, train and validation side by side."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    accuracy_axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    for axes, measure, title in ((loss_axes, "loss", "Loss"), (accuracy_axes, "acc", "Accuracy")):
        for split in ("train", "val"):
            values = log[f"{split}_{measure}"]
            if not np.isnan(values).all():
                axes.plot(log["epoch"], values, marker="o", markersize=3, label=split)
        axes.set(title=title, xlabel="epoch")
        epochs = log["epoch"]
        if len(epochs) <= 12:  # each epoch its tick; with one epoch, no fractional ticks around it
            axes.set_xticks(epochs)
            axes.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_matrix(predictions: Predictions, classes: Sequence[str]) -> Figure:
    """Test confusion matrix: counts, and each true class's row as shares of that class."""
    count = len(classes)
    counts = np.zeros((count, count), dtype=np.int64)
    np.add.at(counts, (predictions.actual, predictions.predicted), 1)
    shares = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    figure = Figure(figsize=(14, 6), layout="constrained")
    for axes, values, title, text, limit in zip(
        figure.subplots(1, 2),
        (counts, shares),
        ("Counts", "Share of each true class"),
        ("{:d}", "{:.0%}"),
        (None, 1.0),  # shares on a fixed 0-100% scale, so pictures of two runs compare
        strict=True,
    ):
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=limit)
        colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
        if limit is not None:
            colorbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.set(title=title, xlabel="predicted", ylabel="actual", xticks=range(count), yticks=range(count))
        axes.set_xticklabels(classes, rotation=45, ha="right")
        axes.set_yticklabels(classes)
        threshold = (limit if limit is not None else values.max()) / 2
        for row in range(count):
            for column in range(count):
                value = values[row, column]
                axes.text(
                    column,
                    row,
                    text.format(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > threshold else "black",
                )
    return figure


def confident_mistakes(
    predictions: Predictions, images: np.ndarray, classes: Sequence[str], count: int = MISTAKES_SHOWN
) -> Figure:
    """A grid of the misclassified test images the model was surest of, most confident first."""
    wrong = np.flatnonzero(predictions.actual != predictions.predicted)
    chosen = wrong[np.argsort(-predictions.confidence[wrong], kind="stable")][:count]
    columns = 6
    rows = max(1, -(-len(chosen) // columns))
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows), layout="constrained")
    figure.suptitle("Most confident mistakes on the test split (true -> predicted)")
    for place, axes in enumerate(np.atleast_1d(figure.subplots(rows, columns)).flat):
        axes.set_axis_off()
        if place >= len(chosen):
            continue
        row = chosen[place]
        axes.imshow(images[predictions.image[row]].transpose(1, 2, 0), interpolation="nearest")
        actual, predicted = classes[predictions.actual[row]], classes[predictions.predicted[row]]
        axes.set_title(f"{actual} -> {predicted}\n{predictions.confidence[row]:.0%}", fontsize=8)
    return figure


def png(figure: Figure, made_from: Mapping[str, str]) -> bytes:
    """The figure as PNG, with `made_from` (the SHA-256 of each input file) in a text chunk."""
    buffer = io.BytesIO()
    metadata = {METADATA_KEY: json.dumps({"made_from": dict(made_from)}, sort_keys=True)}
    # tight: every title and label inside the picture, whatever the layout left at the edges
    figure.savefig(buffer, format="png", dpi=100, metadata=metadata, bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


def read_made_from(path: Path) -> dict[str, str]:
    """The `made_from` a picture of ours records: the SHA-256 of each file it was drawn from."""
    with Image.open(path) as image:  # info: the text chunks before the pixels, which are not decoded
        text = image.info.get(METADATA_KEY) if isinstance(image, PngImageFile) else None
    if text is None:
        raise PipelineError(f"{path}: not a picture of this pipeline (no {METADATA_KEY} text)")
    made_from: dict[str, str] = json.loads(text)["made_from"]
    return made_from


def draw_picture(path: Path, draw: Callable[[], Figure], made_from: Mapping[str, str]) -> bytes:
    """The PNG bytes of the picture for `path`; any failure to draw is one PipelineError naming it."""
    try:
        return png(draw(), made_from)
    except Exception as error:  # matplotlib raises many kinds (fonts, backends, memory): all mean "not drawn"
        raise PipelineError(f"cannot draw {path}: {type(error).__name__}: {error}") from None
