"""Typed, frozen params: one object per params.yaml section, validated in one place.

Every setting that changes a result lives in params.yaml (no hidden defaults here), so
`dvc params diff` sees it. The file and `-S` values are read exactly as DVC reads them: YAML 1.2
through ruamel.yaml (`yes` and `on` are strings, `5e-4` is a float, a key given twice is an
error). Sections other tools keep in the same params.yaml are left alone. Errors name the key,
e.g. `train.lr: must be > 0`, and raise ParamsError (exit code 2) before any other file is touched.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from pipeline.architectures import ARCHITECTURES
from pipeline.errors import ParamsError
from pipeline.files import write_text

logger = logging.getLogger(__name__)

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding takes 32-bit seeds


class Section(BaseModel):
    """Base of every params section: immutable, no unknown keys, no silent type coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataParams(Section):
    url: str = Field(min_length=1)
    sha256: str  # of the archive; upper case is accepted and stored in lower case
    connect_timeout: float = Field(gt=0)  # seconds to open a connection
    read_timeout: float = Field(gt=0)  # seconds without a byte before the attempt is retried
    retries: int = Field(ge=0)  # attempts after the first one
    backoff: float = Field(ge=0)  # seconds before the first retry, doubled after each

    @field_validator("url")
    @classmethod
    def _parsable_url(cls, url: str) -> str:
        try:
            parsed = urlparse(url)
            parsed.port  # noqa: B018  (parses the port: `http://host:x` raises here)
        except ValueError as error:
            raise ValueError(f"not a valid URL ({error})") from None
        return url

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex_digest(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        digest = value.strip().lower()
        if len(digest) != 64 or any(character not in "0123456789abcdef" for character in digest):
            raise ValueError(f"expected the archive's SHA-256 as 64 hexadecimal digits, got {value!r}")
        return digest


class PreprocessParams(Section):
    val_size: int = Field(ge=0)  # training images held out for validation
    seed: int = Field(ge=0, le=MAX_SEED)


class ModelParams(Section):
    arch: str  # a name of pipeline/architectures.py
    width: int = Field(ge=1, le=1024)  # channels of the first stage

    @field_validator("arch")
    @classmethod
    def _registered(cls, arch: str) -> str:
        if arch not in ARCHITECTURES:
            names = list(ARCHITECTURES)
            raise ValueError(f"must be one of {', '.join(names[:-1])} or {names[-1]}, not {arch!r}")
        return arch


class AugmentParams(Section):
    crop_padding: int = Field(ge=0, le=16)  # pixels of reflect padding before a random 32x32 crop
    # Horizontal flip: true draws each image's flip at random every epoch; "alternate" draws it at
    # random once per image (per seed) and then flips each image in every other epoch, so any two
    # consecutive epochs show each image once each way (airbench's derandomized flip); false: none.
    flip: Literal["alternate"] | bool
    cutout: int = Field(ge=0, le=32)  # side in pixels of a zeroed square; 0 turns it off

    @field_validator("flip", mode="before")
    @classmethod
    def _boolean_or_alternate(cls, value: Any) -> Any:
        if value != "alternate" and not isinstance(value, bool):  # 1 == True in Python: refuse it here
            raise ValueError("must be true, false or alternate")
        return value


Precision = Literal["auto", "bf16", "fp32"]
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


class TrainParams(Section):
    device: str = Field(pattern=DEVICE_PATTERN)
    precision: Precision
    compile: Literal["auto"] | bool
    cuda_graphs: Literal["auto"] | bool  # replay each step as one CUDA graph (auto: on for CUDA)
    cudnn_benchmark: bool  # CUDA: time cuDNN's convolution algorithms at first use; false: its heuristics
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)  # global: images per optimizer step over all processes
    optimizer: Literal["sgd", "adam", "muon"]  # muon: Muon for conv filters, SGD for the rest
    lr: float = Field(gt=0)  # peak learning rate
    momentum: float = Field(ge=0, lt=1)  # SGD momentum; Adam's beta1
    adam_beta2: float = Field(ge=0, lt=1)  # Adam's second-moment decay; unused by SGD
    muon_lr: float = Field(gt=0)  # muon: peak step of the filters, a fraction of their norm
    muon_momentum: float = Field(ge=0, lt=1)  # muon: the filters' momentum
    nesterov: bool
    weight_decay: float = Field(ge=0)  # not applied to BatchNorm and bias parameters
    schedule: Literal["onecycle", "cosine", "constant"]
    warmup: float = Field(ge=0, le=1)  # fraction of all steps spent rising to the peak lr
    label_smoothing: float = Field(ge=0, lt=1)
    ema: float = Field(ge=0, lt=1)  # decay of an exponential moving average of the weights; 0 turns it off
    normalize: bool  # subtract the train mean and divide by the std per channel
    seed: int = Field(ge=0, le=MAX_SEED)
    augment: AugmentParams
    val_batch_size: int = Field(gt=0)  # images per forward pass when scoring the validation split
    val_every: int = Field(gt=0)  # epochs between scores of the validation split; the last is always scored
    checkpoint_every: int = Field(ge=0)  # epochs between checkpoints; 0 only on SIGINT/SIGTERM
    nproc: int = Field(ge=1)  # worker processes on this machine (DistributedDataParallel)
    sync_bn: bool  # synchronise BatchNorm statistics across processes

    @field_validator("compile", "cuda_graphs", mode="before")
    @classmethod
    def _auto_or_boolean(cls, value: Any) -> Any:
        if value != "auto" and not isinstance(value, bool):  # 1 == True in Python: refuse it here
            raise ValueError("must be auto, true or false")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.nesterov and self.optimizer in ("sgd", "muon") and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by nproc {self.nproc} "
                "(each process takes an equal share of every batch)"
            )
        return self


class EvaluateParams(Section):
    device: str = Field(pattern=DEVICE_PATTERN)  # also the device of `cifar10 predict`
    precision: Precision  # auto: bf16 autocast where training would use it; also for predict
    batch_size: int = Field(gt=0)  # images per forward pass, also for predict
    tta: bool  # also report accuracy on logits averaged with the horizontal flip
    tta_translate: bool  # with tta: add 1-pixel translations in four directions


class Params(Section):
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams


SECTIONS = tuple(Params.model_fields)

# Keys that change where or how fast training runs, or only what it logs, not the weights it
# computes (beyond floating-point rounding): a checkpoint written with other values of these may
# still be resumed, and a model trained with them is still the model of the params.
RUNTIME_TRAIN_KEYS = frozenset(
    {
        "device",
        "compile",
        "cuda_graphs",
        "cudnn_benchmark",
        "checkpoint_every",
        "nproc",
        "val_batch_size",
        "val_every",
    }
)
# Settings that cannot change any output, only where or how patiently the hash-checked archive is
# fetched and how often training saves its state. dvc.yaml leaves them out of every stage's
# params, so changing them reruns nothing; params.yaml marks them "run-time only".
RUN_TIME_ONLY = {
    "data": ("url", "connect_timeout", "read_timeout", "retries", "backoff"),
    "train": ("checkpoint_every",),
}
# The version of the training procedure (batch order, augmentation draws, step), part of the
# digest: a checkpoint of an earlier procedure is never resumed by a later one.
TRAINING_PROCEDURE = 2

# The stages in pipeline order: each reads the outputs of the one before it.
STAGES = ("download", "preprocess", "train", "evaluate", "plots")
# The train keys that make the weights: evaluate and plots read them only to refuse a model
# trained with others.
WEIGHT_KEYS = tuple(f"train.{key}" for key in TrainParams.model_fields if key not in RUNTIME_TRAIN_KEYS)
# What each stage reads of params.yaml: whole sections or single keys. dvc.yaml lists these
# minus the run-time-only keys (recorded_keys), so DVC reruns a stage exactly when a setting that
# can change its outputs changes, and a stage's -S values are written into params.yaml for these.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "download": ("data",),
    "preprocess": ("preprocess",),
    "train": ("model", "train", "preprocess"),  # preprocess: to refuse data made with others
    "evaluate": ("evaluate", "preprocess", "model", *WEIGHT_KEYS),
    "plots": ("model", *WEIGHT_KEYS),
}


def _leaf_keys(section: type[BaseModel], prefix: str) -> list[str]:
    keys: list[str] = []
    for name, field in section.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


ALL_KEYS = tuple(_leaf_keys(Params, ""))  # every dotted key of params.yaml, e.g. train.augment.flip


def expand_keys(names: Sequence[str]) -> frozenset[str]:
    """Sections and keys as dvc.yaml names them ("model", "train.augment") -> every leaf key."""
    return frozenset(key for key in ALL_KEYS for name in names if key == name or key.startswith(f"{name}."))


def read_keys(stage: str) -> frozenset[str]:
    """Every params.yaml key `stage` reads, run-time-only ones included."""
    return expand_keys(STAGE_PARAMS[stage])


def owned_keys(stage: str) -> frozenset[str]:
    """The keys `stage` is the first to read: those its -S values may set in params.yaml."""
    earlier = STAGES[: STAGES.index(stage)]
    return read_keys(stage) - frozenset(key for other in earlier for key in read_keys(other))


def owner(key: str) -> str:
    """The stage that sets `key`: the first one that reads it."""
    return next(stage for stage in STAGES if key in read_keys(stage))


def recorded_keys(stage: str) -> frozenset[str]:
    """The keys dvc.yaml lists for `stage`: those it reads that can change its outputs."""
    run_time_only = {f"{section}.{key}" for section, keys in RUN_TIME_ONLY.items() for key in keys}
    return read_keys(stage) - run_time_only


def _parse_yaml(text: str, source: str) -> Any:
    """YAML 1.2 as DVC reads params files (ruamel.yaml, safe): no arbitrary objects, no duplicate keys."""
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        mark = error.problem_mark if isinstance(error, MarkedYAMLError) else None
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = (error.problem if isinstance(error, MarkedYAMLError) else None) or str(error)
        raise ParamsError(f"{where}: invalid YAML: {problem.splitlines()[0]}") from None


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """`(did you mean train.epochs?)` for a close match among `candidates`, else "". A key whose
    last part is the name's (train.flip: train.augment.flip) comes first."""
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [candidate for candidate in candidates if candidate.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `-S section.key=value` (the syntax of `dvc exp run -S`); value is read as YAML 1.2."""
    key, separator, value_text = assignment.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ParamsError(f"-S {assignment}: expected KEY=VALUE, e.g. -S train.epochs=5")
    *parents, leaf = key.split(".")
    if not parents or parents[0] not in SECTIONS:
        raise ParamsError(
            f"-S {key}: {key.split('.')[0]} is not a section of the pipeline ({', '.join(SECTIONS)})"
            + did_you_mean(key, ALL_KEYS)
        )
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
        message = "unknown key" + did_you_mean(location, ALL_KEYS)
    elif kind == "bool_type":
        message = f"must be true or false (YAML 1.2 booleans), not {error['input']!r}"
    elif kind == "literal_error":
        message = f"must be one of {context.get('expected', '').replace(chr(39), '')}, not {error['input']!r}"
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
    given = error.get("input")
    if kind not in ("extra_forbidden", "missing", "bool_type", "literal_error") and not isinstance(
        given, dict
    ):
        message += f", not {given!r}"  # the value given, as the user wrote it (-S train.lr=fast)
    return f"{location}: {message}"


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already parsed params mapping; sections the pipeline does not know are left out."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    others = [str(name) for name in raw if name not in SECTIONS]
    if others:
        logger.info("%s: leaving section %s to other tools", source, ", ".join(others))
    try:
        return Params.model_validate({name: raw[name] for name in raw if name in SECTIONS})
    except ValidationError as error:
        raise ParamsError("; ".join(_describe(item) for item in error.errors())) from None


def repository_above(path: Path) -> Path | None:
    """The repository root above the working folder that holds the params file `path` (relative)
    and dvc.yaml; None where there is none."""
    if path.is_absolute():
        return None
    return next(
        (
            folder
            for folder in Path.cwd().parents
            if (folder / path).is_file() and (folder / "dvc.yaml").is_file()
        ),
        None,
    )


def params_not_found(path: Path) -> ParamsError:
    """A missing params file; run from a folder inside the repository, the line names its root."""
    root = repository_above(path)
    if root is not None:
        return ParamsError(
            f"{path}: params file not found here; run the command from the repository root, "
            f"{root}, where dvc.yaml is (stages read and write paths relative to it)"
        )
    return ParamsError(f"{path}: params file not found")


def read_params_text(path: Path) -> str:
    """The params file's text; a missing, unreadable or non-UTF-8 file is a ParamsError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise params_not_found(path) from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file") from None
    except UnicodeDecodeError as error:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {error.start} is 0x{error.object[error.start]:02x})"
        ) from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot read params file: {error.strerror}") from None


def load_params(path: Path, overrides: Sequence[str] = ()) -> Params:
    """Read params.yaml, apply `-S KEY=VALUE` overrides, validate. Raises ParamsError."""
    raw = _parse_yaml(read_params_text(path), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for assignment in overrides:
        _apply_override(raw, assignment)
    return parse_params(raw, str(path))


def file_values(path: Path) -> dict[str, Any]:
    """The params file's values by dotted key, as written (no -S, no validation)."""
    raw = _parse_yaml(read_params_text(path), str(path))
    return flatten(raw) if isinstance(raw, dict) else {}


def write_values(path: Path, values: dict[str, Any]) -> None:
    """Set dotted keys (`{"train.seed": 21}`) in a params file, its comments and layout kept, as
    `dvc exp run -S` edits params.yaml (ruamel.yaml's round trip); the file is replaced atomically."""
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # a long value (a mirror's URL) stays on its key's line
    document = yaml.load(read_params_text(path))
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = document
        for part in parents:
            node = node[part]
        node[leaf] = value
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    write_text(path, buffer.getvalue())


def trained_params(model: ModelParams, train: TrainParams) -> dict[str, Any]:
    """The settings that make the trained weights (not where or how fast they are computed), as JSON."""
    return {
        "model": model.model_dump(mode="json"),
        "train": train.model_dump(mode="json", exclude=set(RUNTIME_TRAIN_KEYS)),
    }


def training_digest(model: ModelParams, train: TrainParams) -> str:
    """SHA-256 of trained_params and the version of the training procedure."""
    payload = {"procedure": TRAINING_PROCEDURE, **trained_params(model, train)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"augment": {"flip": true}}} -> {"train.augment.flip": true}, as DVC names params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two nested mappings (missing counts as different)."""
    one, two = flatten(first), flatten(second)
    return sorted(key for key in one.keys() | two.keys() if one.get(key, None) != two.get(key, None))


# `cifar10 predict` outside a repository (no params.yaml, none named): the evaluate section of the
# params.yaml this project ships, which a test keeps equal.
SHIPPED_EVALUATE = {
    "device": "auto",
    "precision": "auto",
    "batch_size": 1000,
    "tta": True,
    "tta_translate": True,
}
