"""Classify users' own images (PNG, JPEG, any size) with a trained model file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.engine import InputTransform, predict_logits, resolve_device, resolve_precision
from pipeline.errors import PipelineError
from pipeline.weights import load_model

IMAGE_SIZE = 32


def load_image(path: Path) -> np.ndarray:
    """uint8 [3, 32, 32]: the largest centred square (CIFAR images are square), antialiased to 32x32."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PipelineError(f"{path}: not a readable image ({error})") from None
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    resized = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


def classify(
    model_path: Path, images: Sequence[Path], device_name: str, top: int = 3
) -> list[dict[str, Any]]:
    """For each image, the `top` classes with their probabilities, most likely first."""
    pixels = np.stack([load_image(path) for path in images])  # read all first: a bad file fails early
    device = resolve_device(device_name)
    model, card = load_model(model_path, device)
    transform = InputTransform.create(card.mean, card.std, card.normalize, device)
    logits = predict_logits(
        model,
        torch.from_numpy(pixels).to(device),
        transform,
        batch_size=256,
        precision=resolve_precision("auto", device),
    )
    probabilities, classes = logits.softmax(1).topk(min(top, len(card.classes)), dim=1)
    return [
        {
            "image": str(path),
            "top": [
                {"class": card.classes[index], "probability": probability}
                for index, probability in zip(row_classes.tolist(), row_probabilities.tolist(), strict=True)
            ],
        }
        for path, row_classes, row_probabilities in zip(images, classes, probabilities, strict=True)
    ]
