"""The trained model file: weights in safetensors, with what is needed to use them in its metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from pipeline.engine import place_model
from pipeline.errors import ModelFileError
from pipeline.files import write_bytes
from pipeline.model import build_model

FORMAT = "cifar10-model/1"
METADATA_KEY = "cifar10"  # one key holding sorted JSON: safetensors writes several keys in random order


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself (safetensors metadata, one string per field)."""

    arch: str
    width: int
    classes: list[str]
    mean: list[float]  # per channel, 0-1 scale, of the training images
    std: list[float]
    normalize: bool
    params_sha256: str  # training_digest of the model and train params that produced the weights
    torch_version: str

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: Path) -> ModelCard:
        values = parse_metadata(metadata, FORMAT, source, "model file")
        try:
            return cls(**{key: values[key] for key in cls.__dataclass_fields__})
        except (KeyError, TypeError) as error:
            raise ModelFileError(f"{source}: incomplete model metadata ({error})") from None


def parse_metadata(metadata: dict[str, str], expected_format: str, source: Path, kind: str) -> dict[str, Any]:
    """The JSON metadata of one of our safetensors files, checked to be of `expected_format`."""
    try:
        values: dict[str, Any] = json.loads(metadata[METADATA_KEY])
    except (KeyError, ValueError):
        values = {}
    if values.get("format") != expected_format:
        raise ModelFileError(f"{source}: not a cifar10 {kind} (format {values.get('format')!r})")
    return values


def state_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies, as safetensors stores them (channels_last tensors are not contiguous)."""
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}


def save_model(path: Path, state: dict[str, Tensor], card: ModelCard) -> None:
    write_bytes(path, save(state_tensors(state), metadata=card.metadata()))


def read_safetensors(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a missing or damaged file is a ModelFileError."""
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a {kind}")
    if not path.is_file():
        raise ModelFileError(f"{path}: {kind} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: truncated or not a safetensors {kind} ({error})") from None
    return tensors, metadata


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model a file describes and load its weights, in eval mode on `device`."""
    tensors, metadata = read_safetensors(path, "model file")
    card = ModelCard.from_metadata(metadata, path)
    try:
        model = build_model(card.arch, card.width, len(card.classes))  # type: ignore[arg-type]
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelFileError(
            f"{path}: weights do not fit {card.arch} width {card.width}: {first_line}"
        ) from None
    return place_model(model, device).eval(), card
