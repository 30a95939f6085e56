from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.data import Split
from pipeline.engine import (
    AugmentDraws,
    DeviceSplit,
    EpochTotals,
    InputTransform,
    TrainSetup,
    build_optimizer,
    crop_and_flip,
    cutout,
    epoch_permutation,
    evaluate,
    learning_rate_factor,
    predict_logits,
    resolve_device,
    resolve_precision,
    step_generator,
    train_one_epoch,
)
from pipeline.errors import PipelineError
from pipeline.model import build_model
from pipeline.params import AugmentParams, TrainParams, load_params
from tests.conftest import REPO

CPU = torch.device("cpu")


def train_params(*overrides: str) -> TrainParams:
    return load_params(REPO / "params.yaml", list(overrides)).train


def images(count: int, seed: int = 0) -> Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8))


def draws(count: int, augment: AugmentParams, seed: int = 0) -> AugmentDraws:
    return AugmentDraws.draw(count, augment, step_generator(seed, 0, 0, CPU))


def test_no_crop_and_no_flip_is_the_identity() -> None:
    augment = AugmentParams(crop_padding=0, flip=False, cutout=0)
    batch = images(8)
    assert torch.equal(crop_and_flip(batch, draws(8, augment), augment), batch)
    normalised = torch.randn(8, 3, 32, 32)
    assert torch.equal(cutout(normalised, draws(8, augment), 0), normalised)


def test_crop_and_flip_match_reflect_padding_and_mirroring() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=0)
    batch = images(64)
    chosen = draws(64, augment)
    result = crop_and_flip(batch, chosen, augment)
    assert result.shape == batch.shape and result.dtype == torch.uint8
    padded = functional.pad(batch.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
    for index in range(64):
        row, column = (chosen.shifts[index] + 4).tolist()
        expected = padded[index, :, row : row + 32, column : column + 32]
        if chosen.flips[index]:
            expected = expected.flip(-1)
        assert torch.equal(result[index], expected), index
    assert 0 < int(chosen.flips.sum()) < 64
    assert (
        chosen.shifts.min() >= -4 and chosen.shifts.max() <= 4 and len(set(chosen.shifts[:, 0].tolist())) > 3
    )


def test_cutout_zeroes_one_square_per_image() -> None:
    augment = AugmentParams(crop_padding=0, flip=False, cutout=6)
    chosen = draws(32, augment)
    chosen = AugmentDraws(chosen.shifts, chosen.flips, torch.full((32, 2), 16))  # centred: fully inside
    result = cutout(torch.ones(32, 3, 32, 32), chosen, 6)
    assert torch.equal((result == 0).sum(dim=(1, 2, 3)), torch.full((32,), 3 * 36))
    assert torch.all(result[:, :, 13:19, 13:19] == 0)


def test_draws_depend_only_on_seed_epoch_and_step() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    first = AugmentDraws.draw(16, augment, step_generator(3, 2, 5, CPU))
    again = AugmentDraws.draw(16, augment, step_generator(3, 2, 5, CPU))
    other = AugmentDraws.draw(16, augment, step_generator(3, 2, 6, CPU))
    assert torch.equal(first.shifts, again.shifts) and torch.equal(first.cutout_centres, again.cutout_centres)
    assert not torch.equal(first.shifts, other.shifts)
    assert torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 1))
    assert not torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 2))
    assert sorted(epoch_permutation(100, 0, 1).tolist()) == list(range(100))


def test_input_transform_normalises_per_channel() -> None:
    transform = InputTransform.create([0.5, 0.25, 0.0], [0.5, 0.25, 1.0], normalize=True, device=CPU)
    pixels = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert transform(pixels)[0, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
    plain = InputTransform.create([0.5, 0.25, 0.0], [0.5, 0.25, 1.0], normalize=False, device=CPU)
    assert plain(pixels)[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert transform(pixels).is_contiguous(memory_format=torch.channels_last)


def test_onecycle_schedule_rises_to_the_peak_then_falls_to_zero() -> None:
    factors = [learning_rate_factor(step, 100, "onecycle", 0.2) for step in range(100)]
    assert factors[0] == pytest.approx(0.05)
    assert max(factors) == factors[19] == 1.0
    assert all(a < b for a, b in itertools.pairwise(factors[:20]))
    assert all(a > b for a, b in itertools.pairwise(factors[19:]))
    assert factors[-1] == pytest.approx(1 / 81)
    assert {learning_rate_factor(step, 100, "constant", 0.2) for step in range(100)} == {1.0}
    cosine = [learning_rate_factor(step, 100, "cosine", 0.0) for step in range(100)]
    assert cosine[0] < 1.0 and cosine[49] == pytest.approx(0.5, abs=0.02) and cosine[-1] < 0.01


def test_no_weight_decay_on_batchnorm_and_biases() -> None:
    model = build_model("tutorial", 4)
    optimizer = build_optimizer(model, train_params("train.weight_decay=0.01"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(parameter.ndim == 4 or parameter.ndim == 2 for parameter in decayed["params"])
    assert all(parameter.ndim == 1 for parameter in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    adam = build_optimizer(
        model, train_params("train.optimizer=adam", "train.nesterov=false", "train.adam_beta2=0.99")
    )
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["betas"] == (0.9, 0.99)  # momentum and train.adam_beta2, nothing fixed


def test_devices_and_precision() -> None:
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("auto", CPU) in ("bf16", "fp32")


def random_split(count: int, seed: int = 0) -> DeviceSplit:
    labels = np.arange(count) % 10
    return DeviceSplit.from_split(Split(images(count, seed).numpy(), labels.astype(np.int64)), CPU)


def make_setup(model: nn.Module, data: DeviceSplit, params: TrainParams) -> TrainSetup:
    return TrainSetup(
        model=model,
        optimizer=build_optimizer(model, params),
        data=data,
        transform=InputTransform.create([0.5] * 3, [0.25] * 3, True, CPU),
        params=params,
        device=CPU,
        precision="fp32",
        steps_per_epoch=len(data) // params.batch_size,
    )


def test_overfitting_64_images_drives_the_loss_down() -> None:
    torch.manual_seed(0)
    params = train_params(
        "train.epochs=30",
        "train.batch_size=16",
        "train.lr=0.05",
        "train.label_smoothing=0",
        "train.augment.crop_padding=0",
        "train.augment.flip=false",
        "train.augment.cutout=0",
    )
    model = build_model("resnet18", 8).to(memory_format=torch.channels_last)
    setup = make_setup(model, random_split(64), params)
    losses = [train_one_epoch(setup, epoch, EpochTotals())["loss"] for epoch in range(params.epochs)]
    assert losses[-1] < 0.2 * losses[0]
    result = evaluate(model, setup.data, setup.transform, batch_size=32, precision="fp32")
    assert result.accuracy > 0.9 and result.images == 64


def test_non_finite_loss_stops_with_the_step() -> None:
    params = train_params("train.epochs=1", "train.batch_size=8", "train.lr=1e30", "train.momentum=0.99")
    model = build_model("tutorial", 4).to(memory_format=torch.channels_last)
    with pytest.raises(PipelineError, match=r"loss became NaN or infinite at epoch 1, step \d+"):
        train_one_epoch(make_setup(model, random_split(64), params), 0, EpochTotals())


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


def test_non_finite_loss_names_the_first_bad_step() -> None:
    params = train_params("train.epochs=1", "train.batch_size=8", "train.lr=0.01")
    model = build_model("tutorial", 4).to(memory_format=torch.channels_last)
    setup = make_setup(model, random_split(64), params)
    real_step, steps = setup.optimizer.step, []

    def poisoning_step(*args: object, **kwargs: object) -> None:
        steps.append(1)
        if len(steps) == 3:  # the update of step 3 makes the weights NaN, so step 4's loss is NaN
            for parameter in model.parameters():
                parameter.data.fill_(float("nan"))
        real_step()

    setup.optimizer.step = poisoning_step  # type: ignore[method-assign]
    with pytest.raises(PipelineError, match=r"at epoch 1, step 4;"):
        train_one_epoch(setup, 0, EpochTotals())


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
