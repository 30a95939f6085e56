"""Inference with test-time augmentation (pipeline.inference)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pipeline.device import InputTransform
from pipeline.inference import evaluate, predict_logits
from pipeline.model import build_model
from tests.conftest import CPU, random_split


class ConstantModel(nn.Module):
    """Logits that prefer class `choice` for every image, scaled by the mean red value so flips matter."""

    def __init__(self, choice: int) -> None:
        super().__init__()
        self.choice = choice
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, self.choice] = self.scale * (1 + x[:, 0, :, :16].mean((1, 2)))
        return logits


def test_evaluate_counts_correct_predictions() -> None:
    data = random_split(50)
    transform = InputTransform.create([0.0] * 3, [1.0] * 3, False, CPU)
    result = evaluate(ConstantModel(3), data, transform, batch_size=16, precision="fp32")
    assert result.accuracy == pytest.approx(0.1)
    assert result.images == 50 and torch.all(result.predictions == 3)
    assert result.loss > 0


def test_tta_averages_image_and_mirror_logits() -> None:
    data = random_split(8)
    transform = InputTransform.create([0.0] * 3, [1.0] * 3, False, CPU)
    model = ConstantModel(1)
    plain = predict_logits(model, data.images, transform, batch_size=3, precision="fp32")
    mirrored = predict_logits(model, data.images.flip(-1), transform, batch_size=3, precision="fp32")
    both = predict_logits(model, data.images, transform, batch_size=3, precision="fp32", tta=True)
    assert torch.allclose(both, (plain + mirrored) / 2)
    shifted = predict_logits(
        model, data.images, transform, batch_size=3, precision="fp32", tta=True, tta_translate=True
    )
    assert shifted.shape == (8, 10) and not torch.allclose(shifted, both)


def test_evaluate_reports_plain_and_tta_accuracy_from_one_pass() -> None:
    data = random_split(40)
    transform = InputTransform.create([0.0] * 3, [1.0] * 3, False, CPU)
    torch.manual_seed(0)
    model = build_model("tutorial", 4)
    result = evaluate(model, data, transform, batch_size=16, precision="fp32", tta=True, tta_translate=True)
    plain = predict_logits(model, data.images, transform, batch_size=16, precision="fp32")
    averaged = predict_logits(
        model, data.images, transform, batch_size=16, precision="fp32", tta=True, tta_translate=True
    )
    assert torch.equal(result.predictions, plain.argmax(1))
    assert torch.allclose(result.confidences, plain.softmax(1).max(1).values)
    assert result.accuracy == pytest.approx((plain.argmax(1) == data.labels).float().mean().item())
    assert result.tta_accuracy == pytest.approx((averaged.argmax(1) == data.labels).float().mean().item())
    assert evaluate(model, data, transform, batch_size=16, precision="fp32").tta_accuracy is None
