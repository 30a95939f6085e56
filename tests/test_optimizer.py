"""The optimizer of a run (pipeline.optimizer)."""

from __future__ import annotations

import torch

from pipeline.model import build_model
from pipeline.optimizer import build_optimizer
from tests.conftest import train_params


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
