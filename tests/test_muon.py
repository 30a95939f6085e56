"""Muon for the filters, SGD for the rest (pipeline.muon)."""

import pytest
import torch

from pipeline.model import build_model
from pipeline.muon import MuonWithSgd, orthogonalise
from pipeline.optimizer import build_optimizer
from tests.conftest import train_params


@pytest.mark.parametrize("shape", [(3, 16, 144), (2, 144, 16), (1, 32, 32)])  # wide, tall, square
def test_orthogonalise_moves_every_singular_value_near_one(shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    count, rows, columns = shape
    rank = min(rows, columns)
    left, _ = torch.linalg.qr(torch.randn(count, rows, rank, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(count, columns, rank, generator=generator))
    spread = torch.logspace(-1, 0, rank)  # singular values from 0.1 to 1, as a gradient's might be
    matrices = 3.0 * left @ torch.diag(spread) @ right.mT
    result = orthogonalise(matrices)
    assert result.shape == matrices.shape
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.6 and singular.max() < 1.25, singular
    # the same directions: the result is close to U V^T of the input's SVD
    similarity = torch.nn.functional.cosine_similarity(result.flatten(1), (left @ right.mT).flatten(1))
    assert similarity.min() > 0.95
    for index in range(shape[0]):  # a batch is each matrix on its own
        torch.testing.assert_close(result[index], orthogonalise(matrices[index : index + 1])[0])


def muon(*overrides: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model("resnet18", 4)
    return model, build_optimizer(model, train_params("train.optimizer=muon", *overrides))


def set_gradients(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator)


def test_filters_take_muon_steps_and_everything_else_the_steps_of_torch_sgd() -> None:
    model, optimizer = muon("train.weight_decay=0.01", "train.lr=0.3", "train.muon_lr=0.06")
    assert isinstance(optimizer, MuonWithSgd)
    filters, other_decay, no_decay = optimizer.param_groups
    assert filters["muon"] and filters["weight_decay"] == 0.0 and filters["lr_ratio"] == pytest.approx(0.2)
    assert all(parameter.ndim == 4 for parameter in filters["params"])
    assert [parameter.ndim for parameter in other_decay["params"]] == [2]  # the classifier
    assert other_decay["weight_decay"] == 0.01
    assert all(parameter.ndim == 1 for parameter in no_decay["params"])
    reference, sgd = torch_sgd_reference(fused=False)
    for seed in range(3):
        set_gradients(model, seed)
        set_gradients(reference, seed)
        optimizer.step()
        sgd.step()
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        if parameter.ndim == 4:
            assert not torch.equal(parameter, expected), name
        else:
            assert torch.equal(parameter, expected), name  # bit for bit


def torch_sgd_reference(*, fused: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The network `muon("train.weight_decay=0.01", "train.lr=0.3", ...)` starts from, its
    non-filter parameters under torch.optim.SGD with the same settings."""
    torch.manual_seed(0)
    reference = build_model("resnet18", 4)
    sgd = torch.optim.SGD(
        [{"params": other_decay_of(reference), "weight_decay": 0.01}, {"params": no_decay_of(reference)}],
        lr=0.3,
        momentum=0.9,
        nesterov=True,
        **({"fused": True} if fused else {"foreach": True}),
    )
    return reference, sgd


def other_decay_of(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.ndim in (2, 3)]


def no_decay_of(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.ndim <= 1]


def test_the_cuda_configuration_fused_sgd_and_bf16_products_runs_on_the_cpu_too() -> None:
    """What build_optimizer picks on CUDA (never run by the CPU suite otherwise): the SGD groups
    take torch's fused kernel, bit for bit as torch.optim.SGD(fused=True); the filters' Newton-Schulz
    products run in bf16 and land within bf16 rounding of the fp32 steps."""
    model, optimizer = muon("train.weight_decay=0.01", "train.lr=0.3", "train.muon_lr=0.06")
    torch.manual_seed(0)
    cuda_model = build_model("resnet18", 4)
    position = {id(parameter): index for index, parameter in enumerate(model.parameters())}
    cuda_parameters = list(cuda_model.parameters())
    cuda_optimizer = MuonWithSgd(
        [
            {**group, "params": [cuda_parameters[position[id(parameter)]] for parameter in group["params"]]}
            for group in optimizer.param_groups
        ],
        lr=0.3,
        momentum=0.9,
        nesterov=True,
        fused=True,
        product_dtype=torch.bfloat16,
    )
    reference, sgd = torch_sgd_reference(fused=True)
    start = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for seed in range(3):
        for network in (model, cuda_model, reference):
            set_gradients(network, seed)
        optimizer.step()
        cuda_optimizer.step()
        sgd.step()
    named = zip(model.named_parameters(), cuda_model.parameters(), reference.parameters(), strict=True)
    for (name, parameter), cuda_parameter, expected in named:
        if parameter.ndim != 4:
            assert torch.equal(cuda_parameter, expected), name  # bit for bit
            continue
        moved = (parameter - start[name]).norm()
        assert not torch.equal(cuda_parameter, parameter), name  # the bf16 products did run
        assert (cuda_parameter - parameter).norm() < 0.03 * moved, name  # measured up to 0.015 here


def test_a_muon_step_rescales_each_filter_bank_then_moves_it_by_an_orthogonal_step() -> None:
    model, optimizer = muon("train.lr=0.2", "train.muon_lr=0.05", "train.muon_momentum=0.5")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    set_gradients(model, 0)
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}  # type: ignore[union-attr]
    optimizer.step()
    for name, parameter in model.named_parameters():
        if parameter.ndim != 4:
            continue
        out_channels = parameter.shape[0]
        rescaled = before[name] * (out_channels**0.5 / before[name].norm())
        # first step from a zero momentum buffer, Nesterov: g + 0.5 * (0.5 * 0 + g) = 1.5 g
        update = orthogonalise((1.5 * gradients[name]).reshape(1, out_channels, -1)).view_as(parameter)
        torch.testing.assert_close(parameter.detach(), rescaled - 0.05 * update, rtol=1e-5, atol=1e-6)
        step = (parameter.detach() - rescaled).norm() / rescaled.norm()  # the step, relative to the bank
        assert 0.05 * 0.6 < step < 0.05 * 1.25, name


def test_a_zero_momentum_state_steps_as_a_missing_one() -> None:
    """A CUDA-graph warm-up leaves zeroed state behind (pipeline.step._StepState.restore)."""
    results = []
    for zeroed in (False, True):
        model, optimizer = muon()
        if zeroed:
            set_gradients(model, 5)
            optimizer.step()
            for values in optimizer.state.values():
                values["momentum_buffer"].zero_()
            torch.manual_seed(0)
            model.load_state_dict(build_model("resnet18", 4).state_dict())
        for seed in range(2):
            set_gradients(model, seed)
            optimizer.step()
        results.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
    for name, tensor in results[0].items():
        assert torch.equal(results[1][name], tensor), name


def test_muon_is_refused_for_anything_but_filters() -> None:
    model = build_model("tutorial", 4)
    linear = [parameter for parameter in model.parameters() if parameter.ndim == 2]
    with pytest.raises(ValueError, match="4-D"):
        MuonWithSgd(
            [{"params": linear, "muon": True}],
            lr=0.1,
            momentum=0.9,
            nesterov=True,
            fused=False,
            product_dtype=torch.float32,
        )
