from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from pipeline.augmentation import (
    AugmentDraws,
    alternating_flips,
    augment_epoch,
    crop_and_flip,
    cutout,
    epoch_permutation,
    local_positions,
)
from pipeline.data import Split
from pipeline.engine import (
    DeviceSplit,
    EpochTotals,
    InputTransform,
    TrainSetup,
    build_optimizer,
    build_train_step,
    evaluate,
    predict_logits,
    resolve_device,
    resolve_precision,
    train_one_epoch,
)
from pipeline.errors import PipelineError
from pipeline.model import build_model
from pipeline.params import AugmentParams, TrainParams
from pipeline.step import CudaGraphStep, LearningRate, WeightAverage, learning_rate_factor
from tests.conftest import train_params

CPU = torch.device("cpu")


def images(count: int, seed: int = 0) -> Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8))


def draws(count: int, augment: AugmentParams, seed: int = 0, epoch: int = 0) -> AugmentDraws:
    return AugmentDraws.draw(count, augment, seed, epoch)


def test_no_crop_and_no_flip_is_the_identity() -> None:
    augment = AugmentParams(crop_padding=0, flip=False, cutout=0)
    batch = images(8)
    assert torch.equal(crop_and_flip(batch, torch.arange(8), draws(8, augment), augment), batch)
    normalised = torch.randn(8, 3, 32, 32)
    assert torch.equal(cutout(normalised, draws(8, augment).cutout_centres, 0), normalised)


def test_crop_and_flip_match_reflect_padding_and_mirroring() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=0)
    batch = images(64)
    chosen = draws(64, augment)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    result = crop_and_flip(batch, order, chosen, augment)
    assert result.shape == batch.shape and result.dtype == torch.uint8
    assert result.is_contiguous(memory_format=torch.channels_last)
    padded = functional.pad(batch.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
    for index in range(64):
        row, column = (chosen.shifts[index] + 4).tolist()
        expected = padded[order[index], :, row : row + 32, column : column + 32]
        if chosen.flips[index]:
            expected = expected.flip(-1)
        assert torch.equal(result[index], expected), index


def test_crop_and_flip_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.augmentation as augmentation

    augment = AugmentParams(crop_padding=4, flip=True, cutout=0)
    batch, chosen = images(50), draws(50, augment, seed=3)
    whole = crop_and_flip(batch, torch.arange(50), chosen, augment)
    monkeypatch.setattr(augmentation, "GATHER_CHUNK", 7)
    assert torch.equal(crop_and_flip(batch, torch.arange(50), chosen, augment), whole)


def test_cutout_zeroes_one_square_per_image() -> None:
    result = cutout(torch.ones(32, 3, 32, 32), torch.full((32, 2), 16), 6)  # centred: fully inside
    assert torch.equal((result == 0).sum(dim=(1, 2, 3)), torch.full((32,), 3 * 36))
    assert torch.all(result[:, :, 13:19, 13:19] == 0)


def test_cutout_keeps_the_channels_last_layout_the_model_gets_without_it() -> None:
    """With and without cutout the model sees the same layout, so one compiled graph serves both
    (masked_fill returned NCHW: a run with cutout compiled, and cached, a graph of its own)."""
    inputs = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    centres = torch.randint(0, 32, (8, 2))
    result = cutout(inputs, centres, 12)
    assert result.stride() == inputs.stride() == cutout(inputs, centres, 0).stride()
    rows, columns = torch.arange(32)[:, None], torch.arange(32)[None, :]
    for image, (row, column) in enumerate(centres.tolist()):
        inside = (rows >= row - 6) & (rows < row + 6) & (columns >= column - 6) & (columns < column + 6)
        assert torch.equal(result[image], torch.where(inside, 0.0, inputs[image]))


def test_draws_depend_only_on_seed_and_epoch() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    first, again, other = draws(16, augment, 3, 2), draws(16, augment, 3, 2), draws(16, augment, 3, 3)
    assert torch.equal(first.shifts, again.shifts) and torch.equal(first.cutout_centres, again.cutout_centres)
    assert not torch.equal(first.shifts, other.shifts)
    assert torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 1))
    assert not torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 2))
    assert sorted(epoch_permutation(100, 0, 1).tolist()) == list(range(100))


def test_draws_are_uniform_over_their_ranges() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    chosen = draws(90_000, augment, seed=5, epoch=7)
    for column in (chosen.shifts[:, 0], chosen.shifts[:, 1]):  # 9 values, 10,000 expected each
        counts = torch.bincount(column + 4, minlength=9)
        assert len(counts) == 9 and counts.min() > 9_500 and counts.max() < 10_500
    assert abs(chosen.flips.float().mean().item() - 0.5) < 0.01
    centres = torch.bincount(chosen.cutout_centres.flatten(), minlength=32)  # 5,625 expected each
    assert len(centres) == 32 and centres.min() > 5_200 and centres.max() < 6_100
    # rows and columns are drawn independently: their correlation is near zero
    shifts = chosen.shifts.float()
    assert abs(torch.corrcoef(shifts.T)[0, 1].item()) < 0.02


def test_an_epoch_is_a_pure_function_of_seed_and_epoch() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    split = random_split(60)

    def epoch(seed: int, number: int) -> tuple[Tensor, Tensor, Tensor]:
        built = augment_epoch(
            split.images, split.labels, augment, seed=seed, epoch=number, steps=3, batch_size=20
        )
        return built.images, built.labels, built.cutout_centres

    assert all(torch.equal(a, b) for a, b in zip(epoch(1, 2), epoch(1, 2), strict=True))
    assert not torch.equal(epoch(1, 2)[0], epoch(1, 3)[0])
    assert not torch.equal(epoch(1, 2)[0], epoch(2, 2)[0])
    images_of_epoch, labels_of_epoch, _ = epoch(1, 2)
    assert images_of_epoch.shape == (60, 3, 32, 32) and sorted(labels_of_epoch.tolist()) == sorted(
        split.labels.tolist()
    )


@pytest.mark.parametrize("flip", [True, "alternate"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_every_process_takes_its_slice_of_the_same_global_batches(world_size: int, flip: bool | str) -> None:
    augment = AugmentParams(crop_padding=4, flip=flip, cutout=8)
    split = random_split(50)
    options = {"seed": 4, "epoch": 1, "steps": 2, "batch_size": 24}  # 2 of the 50 images are dropped
    whole = augment_epoch(split.images, split.labels, augment, **options)
    parts = [
        augment_epoch(split.images, split.labels, augment, rank=rank, world_size=world_size, **options)
        for rank in range(world_size)
    ]
    for step in range(2):
        expected = whole.batch(step)
        for index, tensor in enumerate(expected):
            joined = torch.cat([part.batch(step)[index] for part in parts])
            assert torch.equal(joined, tensor), (step, index)
    assert local_positions(2, 24, 1, world_size)[0].item() == 24 // world_size


def test_alternating_flips_mirror_each_image_in_every_other_epoch() -> None:
    first, second, third = (alternating_flips(20_000, seed=3, epoch=epoch) for epoch in range(3))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert abs(first.float().mean().item() - 0.5) < 0.015  # each image's first flip is a fair coin
    assert not torch.equal(alternating_flips(20_000, seed=4, epoch=0), first)
    assert torch.equal(alternating_flips(20_000, seed=3, epoch=5), second)  # a pure function of (seed, epoch)


def test_an_alternate_flip_epoch_shows_each_image_the_other_way_round_from_the_last() -> None:
    augment = AugmentParams(crop_padding=0, flip="alternate", cutout=0)  # only the flip changes pixels
    split = random_split(40)

    def mirrored_by_image(epoch: int) -> dict[int, bool]:
        built = augment_epoch(
            split.images, split.labels, augment, seed=2, epoch=epoch, steps=4, batch_size=10
        )
        order = epoch_permutation(40, 2, epoch)
        result = {}
        for position, index in enumerate(order.tolist()):
            shown = built.images[position]
            assert torch.equal(shown, split.images[index]) or torch.equal(shown, split.images[index].flip(-1))
            result[index] = not torch.equal(shown, split.images[index])
        return result

    even, odd = mirrored_by_image(0), mirrored_by_image(1)
    assert all(odd[index] != even[index] for index in range(40))
    assert 0 < sum(even.values()) < 40
    assert mirrored_by_image(2) == even


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
    transform = InputTransform.create([0.5] * 3, [0.25] * 3, True, CPU)
    steps_per_epoch = len(data) // params.batch_size
    step = build_train_step(
        model,
        build_optimizer(model, params),
        transform,
        params,
        device=CPU,
        precision="fp32",
        total_steps=params.epochs * steps_per_epoch,
    )
    return TrainSetup(
        step=step,
        data=data,
        transform=transform,
        params=params,
        device=CPU,
        precision="fp32",
        steps_per_epoch=steps_per_epoch,
    )


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_overfitting_64_images_drives_the_loss_down(optimizer: str) -> None:
    torch.manual_seed(0)
    params = train_params(
        f"train.optimizer={optimizer}",
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
    real_step, steps = setup.step.optimizer.step, []

    def poisoning_step(*args: object, **kwargs: object) -> None:
        steps.append(1)
        if len(steps) == 3:  # the update of step 3 makes the weights NaN, so step 4's loss is NaN
            for parameter in model.parameters():
                parameter.data.fill_(float("nan"))
        real_step()

    setup.step.optimizer.step = poisoning_step  # type: ignore[method-assign]
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


def test_device_learning_rate_follows_the_schedule_step_by_step() -> None:
    params = train_params("train.lr=0.3", "train.warmup=0.25")
    model = build_model("tutorial", 4)
    on_host = build_optimizer(model, params)
    on_device = build_optimizer(model, params)
    host = LearningRate(on_host, params, 40, device=CPU, on_device=False)
    device = LearningRate(on_device, params, 40, device=CPU, on_device=True)
    shared = on_device.param_groups[0]["lr"]
    assert isinstance(shared, Tensor) and all(group["lr"] is shared for group in on_device.param_groups)
    for step in range(40):
        host.set(step)
        device.set(step)
        expected = 0.3 * learning_rate_factor(step, 40, params.schedule, params.warmup)
        assert {group["lr"] for group in on_host.param_groups} == {expected}
        assert shared.item() == pytest.approx(expected, rel=1e-7)  # float32 on the device
    on_device.load_state_dict(on_device.state_dict())  # as a resume does: the groups get the tensor back
    device.attach()
    assert all(group["lr"] is shared for group in on_device.param_groups)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_the_learning_rate_as_a_tensor_updates_like_a_float(optimizer: str) -> None:
    params = train_params(
        f"train.optimizer={optimizer}",
        "train.lr=0.25",
        "train.augment.cutout=4",
        "train.batch_size=10",
        "train.epochs=2",
    )
    weights = []
    for on_device in (False, True):
        torch.manual_seed(0)
        model = build_model("tutorial", 4).to(memory_format=torch.channels_last)
        setup = make_setup(model, random_split(40), params)
        optimizer = setup.step.optimizer
        schedule = LearningRate(optimizer, setup.params, 8, device=CPU, on_device=on_device)
        step = dataclasses.replace(setup.step, learning_rate=schedule)
        setup = dataclasses.replace(setup, step=step)
        train_one_epoch(setup, 0, EpochTotals())
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-6, atol=1e-7)


class HostStream:
    """Stands in for a CUDA stream, so the capture path runs on the CPU up to the capture itself."""

    def wait_stream(self, other: object) -> None:
        pass


class HostGraph:
    """Stands in for a captured CUDA graph: records nothing, replays nothing."""

    replays = 0

    def replay(self) -> None:
        self.replays += 1


def fake_cuda_capture(monkeypatch: pytest.MonkeyPatch, error: Exception | None) -> None:
    """CUDA's capture calls on the CPU: the capture raises `error`, or with None succeeds."""

    def capture(graph: object) -> contextlib.AbstractContextManager[None]:
        if error is not None:
            raise error
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "Stream", HostStream)
    monkeypatch.setattr(torch.cuda, "current_stream", HostStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", HostGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)


def test_a_capture_says_how_long_it_took_then_only_replays(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On CUDA the first epoch also compiles and captures the step: one log line says how long
    each took, so a slow first epoch can be read from the stage's log."""
    params = train_params("train.batch_size=10", "train.epochs=1", "train.augment.cutout=0")
    model = build_model("tutorial", 4).to(memory_format=torch.channels_last)
    setup = make_setup(model, random_split(40), params)
    graph_step = CudaGraphStep(setup.step)
    setup = dataclasses.replace(setup, graph=graph_step)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with monkeypatch.context() as patch, caplog.at_level("INFO", logger="pipeline.step"):
        fake_cuda_capture(patch, None)
        train_one_epoch(setup, 0, EpochTotals())
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1
    assert re.fullmatch(
        r"train\.cuda_graphs: step captured in \d+\.\d s \(3 warm-up steps, compilation included: "
        r"\d+\.\d s\)",
        lines[0],
    ), lines[0]
    assert isinstance(graph_step.graph, HostGraph) and graph_step.graph.replays == 4  # 40 images, batch 10
    for name, tensor in before.items():  # warm-up undone; the stand-in graph's replays change nothing
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_a_failed_capture_warns_once_and_trains_exactly_as_uncaptured(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, optimizer: str
) -> None:
    """The warm-up steps before a capture change weights, momentum, BatchNorm statistics and the
    weight average; after a failed capture all of it is put back, so the run is unchanged."""
    params = train_params(
        f"train.optimizer={optimizer}", "train.batch_size=10", "train.epochs=2", "train.augment.cutout=4"
    )
    results = []
    for captured in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet18", 4).to(memory_format=torch.channels_last)
        setup = make_setup(model, random_split(40), params)
        average = WeightAverage(model, 0.9)
        setup = dataclasses.replace(setup, step=dataclasses.replace(setup.step, average=average))
        if captured:
            setup = dataclasses.replace(setup, graph=CudaGraphStep(setup.step))
        with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="pipeline.step"):
            fake_cuda_capture(patch, RuntimeError("operation not permitted when stream is capturing"))
            caplog.clear()
            epochs = [train_one_epoch(setup, epoch, EpochTotals()) for epoch in range(2)]
        results.append((epochs, model.state_dict(), average.state_dict()))
        warnings = [record.getMessage() for record in caplog.records]
        if captured:
            assert warnings == [
                "train.cuda_graphs: capture failed (RuntimeError: operation not permitted when stream "
                "is capturing); training continues uncaptured"
            ]
            assert setup.graph is not None and setup.graph.failed
        else:
            assert warnings == []
    (plain_epochs, plain_model, plain_average), (epochs, model_state, average_state) = results
    assert epochs == plain_epochs  # the same losses and accuracies, to the last bit
    for name, tensor in plain_model.items():
        assert torch.equal(model_state[name], tensor), name
    for name, tensor in plain_average.items():
        assert torch.equal(average_state[name], tensor), name


def test_weight_average_copies_first_then_moves_towards_the_weights() -> None:
    model = nn.Linear(2, 1)
    average = WeightAverage(model, 0.75)
    with torch.no_grad():
        model.weight.fill_(4.0)
    average.update(model)
    assert torch.equal(average.module.weight, torch.full((1, 2), 4.0))  # the first update copies
    with torch.no_grad():
        model.weight.fill_(8.0)
    average.update(model)
    assert torch.allclose(average.module.weight, torch.full((1, 2), 5.0))  # 4 + (1 - 0.75) * (8 - 4)
    assert average.updates.item() == 2
