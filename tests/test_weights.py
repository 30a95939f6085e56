from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import ModelFileError
from pipeline.model import build_model
from pipeline.model_card import ModelCard
from pipeline.weights import load_model, save_model

CARD = ModelCard(
    arch="tutorial",
    width=4,
    classes=[f"class{index}" for index in range(10)],
    mean=[0.49, 0.48, 0.45],
    std=[0.25, 0.24, 0.26],
    normalize=True,
    params_sha256="ab" * 32,
    torch_version=torch.__version__,
)


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tutorial", 4).to(memory_format=torch.channels_last)
    path = tmp_path / "model.safetensors"
    save_model(path, model.state_dict(), CARD)
    loaded, card = load_model(path, torch.device("cpu"))
    assert card == CARD
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not loaded.training
    # a safetensors file: an 8-byte header length, then a JSON header; no pickle anywhere
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert json.loads(header["__metadata__"]["cifar10"])["format"] == "cifar10-model/1"
    save_model(tmp_path / "again.safetensors", model.state_dict(), CARD)
    assert (tmp_path / "again.safetensors").read_bytes() == raw  # deterministic bytes: DVC sees no change


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a cifar10 model file"):
        load_model(path, torch.device("cpu"))


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, build_model("tutorial", 4).state_dict(), CARD)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated or not a safetensors model file"):
        load_model(path, torch.device("cpu"))


def test_weights_of_another_width_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, build_model("tutorial", 8).state_dict(), CARD)  # the card says width 4
    with pytest.raises(ModelFileError, match="weights do not fit tutorial width 4"):
        load_model(path, torch.device("cpu"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "absent.safetensors", torch.device("cpu"))
