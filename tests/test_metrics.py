from __future__ import annotations

import pytest
import torch

from pipeline.metrics import confusion_csv, per_class_accuracy, train_log_tsv, wilson_interval


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, the Wilson interval
        (0, 10, 0.0, 0.2775),  # ibid.
        (5, 10, 0.2366, 0.7634),
        (9000, 10000, 0.8940, 0.9057),  # 90% on CIFAR-10's test split: about +-0.6 points
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(correct: int, total: int, low: float, high: float) -> None:
    interval = wilson_interval(correct, total)
    assert interval["low"] == pytest.approx(low, abs=5e-5)
    assert interval["high"] == pytest.approx(high, abs=5e-5)


def test_confusion_table_has_one_row_per_image() -> None:
    classes = ["cat", "dog", "frog"]
    text = confusion_csv(
        torch.tensor([0, 2, 1]), torch.tensor([0.5, 0.91234, 0.4]), torch.tensor([0, 1, 1]), classes
    )
    assert text.splitlines() == [
        "image,actual,predicted,confidence",
        "0,cat,cat,0.5000",
        "1,dog,frog,0.9123",
        "2,dog,dog,0.4000",
    ]
    accuracy = per_class_accuracy(torch.tensor([0, 2, 1]), torch.tensor([0, 1, 1]), classes)
    assert accuracy == {"cat": 1.0, "dog": 0.5, "frog": 0.0}


def test_train_log_leaves_missing_validation_empty() -> None:
    row = {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.25, "val_loss": None, "val_acc": None}
    assert train_log_tsv([row | {"seconds": 3.5}]).splitlines()[1] == "1\t0.1\t2\t0.25\t\t\t3.5"
