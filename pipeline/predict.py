"""Classify users' own images (PNG, JPEG, TIFF, any size) with a trained model file.

Each image is read on its own: one that cannot be read gets an error of its own, and the
others are still classified.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.device import InputTransform, out_of_memory_hint, resolve_device, resolve_precision
from pipeline.errors import PipelineError
from pipeline.inference import predict_logits
from pipeline.params import EvaluateParams
from pipeline.weights import load_model

IMAGE_SIZE = 32


def _as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. Greyscale of more than 8 bits is scaled, not clipped: 16-bit (and 32-bit
    integer) from 0-65535, floating point from 0-1, as image libraries store them."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) / 257
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64) * 255
    else:
        return image.convert("RGB")
    grey = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def load_image(path: Path) -> np.ndarray:
    """uint8 [3, 32, 32]: the largest centred square (CIFAR images are square), antialiased to 32x32."""
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 megapixels and refuses above twice that: keep only the refusal.
            # Some releases check again on crop and resize, so all of the work is inside.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                rgb = _as_rgb(image)
            side = min(rgb.size)
            left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
            square = rgb.crop((left, top, left + side, top + side))
            resized = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PipelineError(
            f"{path}: larger than the {limit:,} pixels this command decodes (a guard against "
            "decompression bombs); scale it down first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PipelineError(f"{path}: not a readable image ({error})") from None
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


def classify(
    model_path: Path, images: Sequence[Path], params: EvaluateParams, top: int = 3
) -> list[dict[str, Any]]:
    """For each image in order, `{"image", "top": [{"class", "probability"}, ...]}` with the most
    likely classes first, or `{"image", "error"}` when it cannot be read. A bad model file raises."""
    device = resolve_device(params.device)
    model, card = load_model(model_path, device)
    results: list[dict[str, Any]] = []
    pixels = []
    for path in images:
        try:
            pixels.append(load_image(path))
            results.append({"image": str(path)})
        except PipelineError as error:
            results.append({"image": str(path), "error": str(error)})
    if not pixels:
        return results
    transform = InputTransform.create(card.mean, card.std, card.normalize, device)
    with out_of_memory_hint("evaluate.batch_size", params.batch_size, device):
        logits = predict_logits(
            model,
            torch.from_numpy(np.stack(pixels)).to(device),
            transform,
            batch_size=params.batch_size,
            precision=resolve_precision(params.precision, device),
            tta=params.tta,  # as for the test set: the mirror (and 1-pixel shifts) averaged in
            tta_translate=params.tta_translate,
        )
    if not torch.isfinite(logits).all():  # as evaluate refuses it: no ranking of NaN probabilities
        raise PipelineError(f"{model_path}: the model gives non-finite logits; nothing was classified")
    probabilities, classes = logits.softmax(1).topk(min(top, len(card.classes)), dim=1)
    readable = iter(zip(classes.tolist(), probabilities.tolist(), strict=True))
    for result in results:
        if "error" not in result:
            row_classes, row_probabilities = next(readable)
            result["top"] = [
                {"class": card.classes[index], "probability": probability}
                for index, probability in zip(row_classes, row_probabilities, strict=True)
            ]
    return results
