"""The trained model file: weights in safetensors, with its card (pipeline.model_card) in the metadata."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor, nn

from pipeline.device import place_model
from pipeline.errors import ModelFileError
from pipeline.files import write_bytes
from pipeline.model import build_model
from pipeline.model_card import ModelCard, open_safetensors


def state_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies, as safetensors stores them (channels_last tensors are not contiguous)."""
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}


def save_model(path: Path, state: dict[str, Tensor], card: ModelCard) -> None:
    write_bytes(path, save(state_tensors(state), metadata=card.metadata()))


def read_safetensors(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file; a missing or damaged file is a
    ModelFileError."""
    with open_safetensors(path, kind, "pt") as handle:
        return {name: handle.get_tensor(name) for name in list(handle.keys())}, handle.metadata() or {}


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model a file describes and load its weights, in eval mode on `device`."""
    tensors, metadata = read_safetensors(path, "model file")
    card = ModelCard.from_metadata(metadata, path)
    try:
        model = build_model(card.arch, card.width, len(card.classes))
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelFileError(
            f"{path}: weights do not fit {card.arch} width {card.width}: {first_line}"
        ) from None
    return place_model(model, device).eval(), card
