"""The training loop (pipeline.train_loop) and its step (pipeline.step): learning rate, non-finite
losses, CUDA graph capture, weight average."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re

import pytest
import torch
from torch import Tensor, nn

from pipeline.device import DeviceSplit, InputTransform
from pipeline.errors import PipelineError
from pipeline.inference import evaluate
from pipeline.model import build_model
from pipeline.optimizer import build_optimizer
from pipeline.params import TrainParams
from pipeline.step import CudaGraphStep, LearningRate, WeightAverage, learning_rate_factor
from pipeline.train_loop import EpochTotals, TrainSetup, build_train_step, train_one_epoch
from tests.conftest import CPU, random_split, train_params


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
