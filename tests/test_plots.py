"""The pictures' axes: whole epochs, and a fixed scale for shares so two runs' pictures compare."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.plots import Predictions, confusion_matrix, learning_curves, png, read_made_from

CLASSES = [f"class{index}" for index in range(10)]


def log(epochs: int) -> dict[str, np.ndarray]:
    values = np.linspace(2.0, 1.0, epochs)
    return {
        "epoch": np.arange(1, epochs + 1),
        "train_loss": values,
        "val_loss": values,
        "train_acc": 1 / values,
        "val_acc": 1 / values,
    }


def test_one_epoch_has_one_whole_tick() -> None:
    for axes in learning_curves(log(1)).axes:
        assert list(axes.get_xticks()) == [1]
    for axes in learning_curves(log(40)).axes:
        ticks = [tick for tick in axes.get_xticks() if 1 <= tick <= 40]
        assert ticks and all(float(tick).is_integer() for tick in ticks)


def test_shares_are_drawn_on_a_fixed_zero_to_hundred_percent_scale() -> None:
    for correct in (2, 9):  # a poor and a good model: the same colour scale
        actual = np.repeat(np.arange(10), 10)
        predicted = np.where(np.arange(100) % 10 < correct, actual, (actual + 1) % 10)
        predictions = Predictions(np.arange(100), actual, predicted, np.ones(100))
        figure = confusion_matrix(predictions, CLASSES)
        counts_image, shares_image = (axes.images[0] for axes in figure.axes[:2])
        assert shares_image.norm.vmin == 0 and shares_image.norm.vmax == 1
        assert counts_image.norm.vmax == max(correct, 10 - correct)  # counts keep their own scale


def test_every_title_and_label_is_inside_the_picture() -> None:
    """A test split's worth of predictions (1,000 per class, 4-digit counts): the confusion
    matrix's titles stood above its canvas; the PNG holds everything drawn."""
    rng = np.random.default_rng(0)
    actual = np.repeat(np.arange(10), 1000)
    predicted = np.where(rng.random(10000) < 0.9, actual, rng.integers(0, 10, 10000))
    figure = confusion_matrix(Predictions(np.arange(10000), actual, predicted, rng.random(10000)), CLASSES)
    with Image.open(io.BytesIO(png(figure, {"model_sha256": "0" * 64}))) as picture:
        width, height = picture.size
    drawn = figure.get_tightbbox()  # inches: every artist, titles and tick labels included
    assert width >= drawn.width * 100 and height >= drawn.height * 100  # at 100 dpi


def test_a_picture_names_what_it_was_drawn_from(tmp_path: Path) -> None:
    made_from = {"model_sha256": "a" * 64, "confusion_sha256": "b" * 64}
    path = tmp_path / "curves.png"
    path.write_bytes(png(learning_curves(log(3)), made_from))
    assert read_made_from(path) == made_from
    Image.new("RGB", (4, 4)).save(tmp_path / "foreign.png")
    with pytest.raises(PipelineError, match="not a picture of this pipeline"):
        read_made_from(tmp_path / "foreign.png")
