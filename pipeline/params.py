"""Typed, frozen params: one object per params.yaml section, validated in one place.

Every key lives in params.yaml (no hidden defaults here), so `dvc params diff` sees every
hyperparameter. Errors name the key, e.g. `train.lr: must be > 0`, and raise ParamsError
(exit code 2) before the pipeline touches any other file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ParamsError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


class Section(BaseModel):
    """Base of every params section: immutable, no unknown keys, no silent type coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataParams(Section):
    url: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    connect_timeout: float = Field(gt=0)  # seconds to open a connection
    read_timeout: float = Field(gt=0)  # seconds without a byte before the attempt is retried
    retries: int = Field(ge=0)  # attempts after the first one
    backoff: float = Field(ge=0)  # seconds before the first retry, doubled after each


class PreprocessParams(Section):
    val_size: int = Field(ge=0)  # training images held out for validation
    seed: int = Field(ge=0)


class ModelParams(Section):
    arch: Literal["resnet18", "tutorial"]
    width: int = Field(ge=1, le=1024)  # channels of the first stage


class AugmentParams(Section):
    crop_padding: int = Field(ge=0, le=16)  # pixels of reflect padding before a random 32x32 crop
    flip: bool  # random horizontal flip
    cutout: int = Field(ge=0, le=32)  # side in pixels of a zeroed square; 0 turns it off


class TrainParams(Section):
    device: str = Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    precision: Literal["auto", "bf16", "fp32"]
    compile: Literal["auto", True, False]
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)  # global: images per optimizer step over all processes
    optimizer: Literal["sgd", "adam"]
    lr: float = Field(gt=0)  # peak learning rate
    momentum: float = Field(ge=0, lt=1)  # SGD momentum; Adam's beta1
    nesterov: bool
    weight_decay: float = Field(ge=0)  # not applied to BatchNorm and bias parameters
    schedule: Literal["onecycle", "cosine", "constant"]
    warmup: float = Field(ge=0, le=1)  # fraction of all steps spent rising to the peak lr
    label_smoothing: float = Field(ge=0, lt=1)
    ema: float = Field(ge=0, lt=1)  # decay of an exponential moving average of the weights; 0 turns it off
    normalize: bool  # subtract the train mean and divide by the std per channel
    seed: int = Field(ge=0)
    augment: AugmentParams
    checkpoint_every: int = Field(ge=0)  # epochs between checkpoints; 0 only on SIGINT/SIGTERM
    nproc: int = Field(ge=1)  # worker processes on this machine (DistributedDataParallel)
    sync_bn: bool  # synchronise BatchNorm statistics across processes

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainParams:
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class EvaluateParams(Section):
    device: str = Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    batch_size: int = Field(gt=0)
    tta: bool  # also report accuracy on logits averaged with the horizontal flip
    tta_translate: bool  # with tta: add 1-pixel translations in four directions


class Params(Section):
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams


# Keys that change how fast or where training runs, not what it computes: a checkpoint
# written with other values of these may still be resumed.
RUNTIME_TRAIN_KEYS = frozenset({"device", "compile", "checkpoint_every", "nproc"})


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `5e-4` is a string; DVC writes YAML 1.2, where it is a float."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ParamsError(f"{where}: invalid YAML: {problem}") from None


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `-S section.key=value` (the syntax of `dvc exp run -S`); value is read as YAML."""
    key, separator, value_text = assignment.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ParamsError(f"-S {assignment}: expected KEY=VALUE, e.g. -S train.epochs=5")
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{'.'.join(parents[: depth + 1])}: is a value, not a section (in -S {key})")
        node = child
    value = _parse_yaml(value_text, f"-S {key}") if value_text.strip() else ""
    node[leaf] = value


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "params"
    kind = error["type"]
    context = error.get("ctx", {})
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "missing key"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        operator = {
            "greater_than": ">",
            "greater_than_equal": ">=",
            "less_than": "<",
            "less_than_equal": "<=",
        }[kind]
        limit = next(iter(context.values()))
        message = (
            f"must be {operator} {limit:g}" if isinstance(limit, float) else f"must be {operator} {limit}"
        )
    elif kind == "value_error":
        message = str(context.get("error", error["msg"]))
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
    return f"{location}: {message}"


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already parsed params mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError("; ".join(_describe(item) for item in error.errors())) from None


def load_params(path: Path, overrides: Sequence[str] = ()) -> Params:
    """Read params.yaml, apply `-S KEY=VALUE` overrides, validate. Raises ParamsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot read params file: {error.strerror}") from None
    raw = _parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for assignment in overrides:
        _apply_override(raw, assignment)
    return parse_params(raw, str(path))


def training_digest(model: ModelParams, train: TrainParams) -> str:
    """SHA-256 of every setting that changes the trained weights (not where or how fast they are computed)."""
    payload = {
        "model": model.model_dump(mode="json"),
        "train": train.model_dump(mode="json", exclude=set(RUNTIME_TRAIN_KEYS)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
