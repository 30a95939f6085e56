"""The pictures' axes: whole epochs, and a fixed scale for shares so two runs' pictures compare."""

from __future__ import annotations

import numpy as np

from pipeline.plots import Predictions, confusion_matrix_figure, learning_curves_figure

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
    for axes in learning_curves_figure(log(1)).axes:
        assert list(axes.get_xticks()) == [1]
    for axes in learning_curves_figure(log(40)).axes:
        ticks = [tick for tick in axes.get_xticks() if 1 <= tick <= 40]
        assert ticks and all(float(tick).is_integer() for tick in ticks)


def test_shares_are_drawn_on_a_fixed_zero_to_hundred_percent_scale() -> None:
    for correct in (2, 9):  # a poor and a good model: the same colour scale
        actual = np.repeat(np.arange(10), 10)
        predicted = np.where(np.arange(100) % 10 < correct, actual, (actual + 1) % 10)
        predictions = Predictions(np.arange(100), actual, predicted, np.ones(100))
        figure = confusion_matrix_figure(predictions, CLASSES)
        counts_image, shares_image = (axes.images[0] for axes in figure.axes[:2])
        assert shares_image.norm.vmin == 0 and shares_image.norm.vmax == 1
        assert counts_image.norm.vmax == max(correct, 10 - correct)  # counts keep their own scale
