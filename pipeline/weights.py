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
from pipeline.errors import ModelFileError, PipelineError
from pipeline.files import write_bytes
from pipeline.model import build_model
from pipeline.params import ModelParams, TrainParams, differences, flatten, trained_params, training_digest

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
    params: dict[str, Any] | None = None  # trained_params: those model and train params, by name

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: Path) -> ModelCard:
        values = parse_metadata(metadata, FORMAT, source, "model file")
        try:
            optional = {"params"}  # absent from files written before it was added
            return cls(
                **{
                    key: values[key]
                    for key in cls.__dataclass_fields__
                    if key not in optional or key in values
                }
            )
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


def read_safetensors(
    path: Path, kind: str, *, tensors: bool = True
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (none unless `tensors`) and the metadata of a safetensors file; a missing or
    damaged file is a ModelFileError."""
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a {kind}")
    if not path.is_file():
        raise ModelFileError(f"{path}: {kind} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys()) if tensors else []
            values = {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: truncated or not a safetensors {kind} ({error})") from None
    return values, metadata


def read_card(path: Path) -> ModelCard:
    """A model file's card, from its header alone."""
    _, metadata = read_safetensors(path, "model file", tensors=False)
    return ModelCard.from_metadata(metadata, path)


def check_trained_with(
    card: ModelCard, path: Path, model: ModelParams, train: TrainParams, source: str
) -> None:
    """Refuse a model file trained with other model or train params than `source` says.

    What DVC records for a stage that reads the model is params.yaml; a model made with other
    values (by `cifar10 train -S ...`, or restored for other params) would make that record false.
    """
    if card.params_sha256 == training_digest(model, train):
        return
    if card.params is None:
        detail = "it records only a digest of them"
    else:
        expected = trained_params(model, train)
        keys = differences(card.params, expected)
        recorded, wanted = flatten(card.params), flatten(expected)
        detail = (
            ", ".join(
                f"{key}={recorded.get(key)} in the model, {wanted.get(key)} in {source}" for key in keys
            )
            if keys
            else "the same params, an earlier version of the training code"
        )
    raise PipelineError(
        f"{path} was trained with other params than {source} ({detail}); train it for these params "
        "(`dvc repro`, or `cifar10 train` with the same -S options) or give this command the -S "
        "options it was trained with"
    )


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
