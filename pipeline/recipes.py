"""Named recipes: the quick try, the CPU recipe and the GPU recipes, each a set of params.yaml
values. `cifar10 recipe NAME` prints them as `-S` options, so `dvc exp run $(cifar10 recipe cpu)`
writes every value into params.yaml, where DVC records it, as if each `-S` were typed out.

Figures are on the JPEG-decoded copy of CIFAR-10 the docs measure on (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    summary: str  # what it gives, and where it was measured
    values: dict[str, Any]  # params.yaml key -> value

    def options(self) -> list[str]:
        """`-S key=value` for each value, in the syntax `dvc exp run -S` reads (YAML 1.2 scalars)."""
        return [part for key, value in self.values.items() for part in ("-S", f"{key}={scalar(value)}")]


def scalar(value: Any) -> str:
    """A value as YAML 1.2 writes it on one line: true, 0.2, alternate."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


RECIPES: dict[str, Recipe] = {
    "quick": Recipe(
        "a quarter-width ResNet-18, two epochs of Muon: about 4 minutes on 2 CPU cores, ~73% (74% with TTA)",
        {"model.width": 16, "train.epochs": 2, "train.optimizer": "muon"},
    ),
    "cpu": Recipe(
        "width 32, 8 epochs of Muon on all 50,000 images: 19-20 minutes of training on 2 cores with AVX-512 "
        "and bf16, ~89% with TTA",
        {
            "preprocess.val_size": 0,
            "model.width": 32,
            "train.epochs": 8,
            "train.batch_size": 256,
            "train.optimizer": "muon",
            "train.warmup": 0,
            "train.label_smoothing": 0.2,
            "train.augment.cutout": 0,
            "train.augment.flip": "alternate",
        },
    ),
    "gpu": Recipe(
        "the defaults (26 epochs) on all 50,000 images: 21 s of training on an H200, 91.1% with TTA",
        {"preprocess.val_size": 0},
    ),
    "gpu-fast": Recipe(
        "22 epochs, label smoothing 0.2, no cutout, all 50,000 images: 18 s on an H200, 90.9% with TTA",
        {
            "preprocess.val_size": 0,
            "train.epochs": 22,
            "train.label_smoothing": 0.2,
            "train.augment.cutout": 0,
        },
    ),
}
