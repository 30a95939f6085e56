"""The optimizer of a run: SGD (Nesterov), Adam, or Muon for the convolution filters with SGD for
the rest (pipeline.muon holds Muon itself), with weight decay on conv and linear weights only.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.muon import MuonWithSgd
from pipeline.params import TrainParams


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam, or Muon for the filters with SGD for the rest (pipeline.muon); weight
    decay on conv and linear weights only, never on BN or biases (nor on Muon's filters)."""
    decay = [parameter for parameter in model.parameters() if parameter.ndim > 1]
    no_decay = [parameter for parameter in model.parameters() if parameter.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel per step on CUDA, safe to capture in a CUDA graph (Adam keeps its step
    # count on the device); on the CPU the foreach (multi-tensor) path is the fast one.
    on_cuda = next(model.parameters()).is_cuda
    if params.optimizer == "muon":
        filters = [parameter for parameter in decay if parameter.ndim == 4]
        other_decay = [parameter for parameter in decay if parameter.ndim != 4]
        return MuonWithSgd(
            [
                # No weight decay: Muon holds each filter bank at a fixed norm.
                {
                    "params": filters,
                    "muon": True,
                    "momentum": params.muon_momentum,
                    "lr_ratio": params.muon_lr / params.lr,
                },
                {"params": other_decay, "weight_decay": params.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov,
            fused=on_cuda,
            product_dtype=torch.bfloat16 if on_cuda else torch.float32,
        )
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov,
            **({"fused": True} if on_cuda else {"foreach": True}),
        )
    return torch.optim.Adam(
        groups,
        lr=params.lr,
        betas=(params.momentum, params.adam_beta2),
        **({"fused": True, "capturable": True} if on_cuda else {"foreach": True}),
    )
