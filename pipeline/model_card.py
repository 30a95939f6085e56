"""A model file's card: what the safetensors metadata of models/model.safetensors says about it.

Read from the file's header alone, without torch, so the stages that only need to know which
params made a model (plots, and the checks of evaluate and predict) stay light.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from pipeline.errors import ModelFileError, PipelineError
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
    data_sha256: str | None = None  # pipeline.data.prepared_digest of the data/prepared it was trained on

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: Path) -> ModelCard:
        values = parse_metadata(metadata, FORMAT, source, "model file")
        try:
            optional = {"params", "data_sha256"}  # absent from files written before they were added
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


@contextlib.contextmanager
def open_safetensors(path: Path, kind: str, framework: str) -> Iterator[Any]:
    """A safetensors file opened for reading; a missing path, a folder, or a file that is damaged
    (here or while its tensors are read in the `with` block) is one ModelFileError."""
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a {kind}")
    if not path.is_file():
        raise ModelFileError(f"{path}: {kind} not found")
    try:
        with safe_open(str(path), framework=framework) as handle:
            yield handle
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: truncated or not a safetensors {kind} ({error})") from None


def read_metadata(path: Path, kind: str) -> dict[str, str]:
    """The metadata of a safetensors file, from its header alone (numpy's framework: no torch)."""
    with open_safetensors(path, kind, "numpy") as handle:
        return handle.metadata() or {}


def read_card(path: Path) -> ModelCard:
    """A model file's card, from its header alone."""
    return ModelCard.from_metadata(read_metadata(path, "model file"), path)


def check_trained_with(
    card: ModelCard, path: Path, model: ModelParams, train: TrainParams, source: str, remedy: str
) -> None:
    """Refuse a model file trained with other model or train params than `source` says; the
    error ends with `remedy`, what gets the right model.

    What DVC records for a stage that reads the model is params.yaml; a model made with other
    values (params.yaml edited by hand, or a run-cache entry recorded while params.yaml changed
    during a run) would make that record false.
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
    raise PipelineError(f"{path} was trained with other params than {source} ({detail}); {remedy}")
