"""Muon for the convolution filters and Nesterov SGD for everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks", the optimizer
of the 2024-25 CIFAR-10 speed runs) takes each filter bank's Nesterov-momentum update as a matrix
[out channels, in channels x kernel taps] and replaces it by a nearby matrix whose singular values
are all about 1, so every direction of the bank moves at the same rate whatever the gradient's
scale. Before its step each bank is rescaled to a Frobenius norm of sqrt(out channels): BatchNorm
follows every convolution, so the scale carries nothing, and with it fixed the learning rate is the
step's size relative to the weights. Biases, BatchNorm and the classifier take the SGD update of
`torch.optim.SGD` (its own functional code, so they update exactly as they would there).

Device work only (no host sync), so a CUDA graph can capture the step; the learning rate may be a
one-element tensor shared by all groups (pipeline.step.LearningRate).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.sgd import sgd

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan et al.'s quintic iteration
NEWTON_SCHULZ_STEPS = 5


def orthogonalise(matrices: Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> Tensor:
    """[N, rows, columns] -> the same, each matrix's singular values moved to about 1 (0.7 to 1.2).

    A Newton-Schulz iteration on X / |X|_F: cheaper than an SVD and made of matrix products only.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = matrices / (torch.linalg.matrix_norm(matrices, keepdim=True) + 1e-7)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT  # [N, rows, rows]
        x = a * x + (b * gram + c * gram @ gram) @ x
    result: Tensor = x.mT if tall else x
    return result


class MuonWithSgd(torch.optim.Optimizer):
    """Groups with `muon: True` (4-D filters only) take Muon steps, the others SGD steps.

    A Muon group's learning rate is the group's `lr` times its `lr_ratio`, so one schedule (one
    shared value) drives both kinds of group.
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        *,
        lr: float,
        momentum: float,
        nesterov: bool,
        fused: bool,
        product_dtype: torch.dtype,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": 0.0,
            "muon": False,
            "lr_ratio": 1.0,
        }
        super().__init__(groups, defaults)
        self.fused = fused  # SGD groups: one fused kernel (CUDA) or foreach (CPU)
        # Newton-Schulz products: bf16 on CUDA, as Muon's authors run it (the iteration tolerates
        # it); fp32 on the CPU, where the measurements in benchmarks/results/cpu-muon.md ran.
        self.product_dtype = product_dtype
        for group in self.param_groups:
            if group["muon"] and any(parameter.ndim != 4 for parameter in group["params"]):
                raise ValueError("Muon groups hold convolution filters (4-D) only")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            parameters = [parameter for parameter in group["params"] if parameter.grad is not None]
            if not parameters:
                continue
            if group["muon"]:
                self._muon_step(group, parameters)
                continue
            buffers = [self.state[parameter].get("momentum_buffer") for parameter in parameters]
            sgd(
                parameters,
                [parameter.grad for parameter in parameters],
                buffers,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
                foreach=not self.fused,
                fused=self.fused,
            )
            for parameter, buffer in zip(parameters, buffers, strict=True):
                self.state[parameter]["momentum_buffer"] = buffer

    def _muon_step(self, group: dict[str, Any], parameters: list[Tensor]) -> None:
        momentum = group["momentum"]
        gradients = [parameter.grad for parameter in parameters]
        buffers = []
        for parameter in parameters:
            state = self.state[parameter]
            if "momentum_buffer" not in state:  # zero, not the first gradient: a zero state is a missing one
                state["momentum_buffer"] = torch.zeros_like(parameter)
            buffers.append(state["momentum_buffer"])
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, gradients)  # type: ignore[arg-type]
        if group["nesterov"]:
            updates = list(torch._foreach_add(gradients, buffers, alpha=momentum))  # type: ignore[arg-type]
        else:
            updates = [buffer.clone() for buffer in buffers]
        norms = torch._foreach_norm(parameters)
        torch._foreach_div_(norms, [parameter.shape[0] ** 0.5 for parameter in parameters])
        torch._foreach_div_(parameters, norms)  # each bank at norm sqrt(out channels)
        # Banks of one shape are orthogonalised together: a few batched products, not one per bank.
        by_shape: dict[torch.Size, list[int]] = {}
        for index, parameter in enumerate(parameters):
            by_shape.setdefault(parameter.shape, []).append(index)
        for shape, indices in by_shape.items():
            stacked = torch.stack([updates[index].reshape(shape[0], -1) for index in indices])
            orthogonal = orthogonalise(stacked.to(self.product_dtype)).to(parameters[0].dtype)
            for position, index in enumerate(indices):
                updates[index] = orthogonal[position].view(shape)
        learning_rate = group["lr"] * group["lr_ratio"]  # a float, or a tensor on the device
        torch._foreach_mul_(updates, learning_rate)
        torch._foreach_sub_(parameters, updates)
