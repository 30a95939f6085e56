"""Inference: the logits of a model on images on the device, with test-time augmentation (TTA:
the mirror, and the four 1-pixel translations of both), and the loss and accuracy of a split
(evaluate), plain and with TTA, from one pass over the views. Used by validation during
training, the evaluate stage and predict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.device import DeviceSplit, InputTransform, Precision, ReduceSum, autocast

TTA_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # 1-pixel translations (rows, columns)


def _translate(inputs: Tensor, rows: int, columns: int) -> Tensor:
    padded = functional.pad(inputs, (1, 1, 1, 1), mode="reflect")
    height, width = inputs.shape[-2:]
    return padded[..., 1 + rows : 1 + rows + height, 1 + columns : 1 + columns + width]


@torch.no_grad()
def view_logits(
    model: nn.Module,
    images: Tensor,
    transform: InputTransform,
    *,
    batch_size: int,
    precision: Precision,
    tta: bool = False,
    tta_translate: bool = False,
) -> Tensor:
    """Logits float32 [V, N, 10] for uint8 images [N, 3, 32, 32] on the model's device, one row per view.

    View 0 is the image itself; with `tta` view 1 is its mirror, and with `tta_translate` too both
    follow shifted by one pixel in each of four directions.
    """
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        inputs = transform(images[start : start + batch_size])
        views = [inputs]
        if tta:
            views.append(inputs.flip(-1))
            if tta_translate:
                views += [_translate(view, *shift) for view in views[:2] for shift in TTA_SHIFTS]
        with autocast(images.device, precision):
            outputs.append(torch.stack([model(view).float() for view in views]))
    if not outputs:
        return torch.empty(1 + tta * (1 + 8 * tta_translate), 0, 10, device=images.device)
    return torch.cat(outputs, dim=1)


def predict_logits(
    model: nn.Module,
    images: Tensor,
    transform: InputTransform,
    *,
    batch_size: int,
    precision: Precision,
    tta: bool = False,
    tta_translate: bool = False,
) -> Tensor:
    """Logits float32 [N, 10]: with `tta`, the mean over the views of `view_logits`."""
    views = view_logits(
        model,
        images,
        transform,
        batch_size=batch_size,
        precision=precision,
        tta=tta,
        tta_translate=tta_translate,
    )
    return views.mean(0)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy of the plain images, no label smoothing
    accuracy: float  # of the plain images
    images: int
    predictions: Tensor  # int64 [N], of the plain images
    confidences: Tensor  # float32 [N]: the predicted class's softmax probability
    tta_accuracy: float | None  # of the logits averaged over the views, when asked for


def evaluate(
    model: nn.Module,
    data: DeviceSplit,
    transform: InputTransform,
    *,
    batch_size: int,
    precision: Precision,
    tta: bool = False,
    tta_translate: bool = False,
    rank: int = 0,
    world_size: int = 1,
    reduce_sum: ReduceSum | None = None,
) -> Evaluation:
    """Loss and accuracy of `model` on `data`, and with `tta` the TTA accuracy, from one pass over the views.

    With several processes each takes every world_size-th image and the sums are reduced.
    """
    images, labels = data.images[rank::world_size], data.labels[rank::world_size]
    views = view_logits(
        model,
        images,
        transform,
        batch_size=batch_size,
        precision=precision,
        tta=tta,
        tta_translate=tta_translate,
    )
    predictions = views[0].argmax(1)
    confidences = views[0].softmax(1).gather(1, predictions[:, None])[:, 0]
    sums = torch.stack(
        [
            functional.cross_entropy(views[0], labels, reduction="sum"),
            (predictions == labels).sum().float(),
            (views.mean(0).argmax(1) == labels).sum().float(),
            torch.tensor(float(len(labels)), device=views.device),
        ]
    )
    if reduce_sum is not None:
        sums = reduce_sum(sums)
    loss_sum, correct, tta_correct, count = sums.tolist()
    count = max(1.0, count)
    return Evaluation(
        loss_sum / count,
        correct / count,
        int(count),
        predictions,
        confidences,
        tta_correct / count if tta else None,
    )
