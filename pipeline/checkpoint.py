"""Training checkpoints: one safetensors file holding everything needed to continue bit for bit.

Tensors (model, optimizer state, weight average, RNG states) are safetensors entries; the rest
(epoch, step, partial epoch sums, per-epoch history, params and data digests, optimizer
hyperparameters) is JSON in the file's metadata. One file written atomically means a crash
or `kill -9` mid-write leaves the previous checkpoint whole. No pickle. Where the files live and
how many are kept: pipeline.checkpoint_folder.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor

from pipeline.checkpoint_folder import FORMAT
from pipeline.errors import ModelFileError
from pipeline.files import write_bytes
from pipeline.model_card import METADATA_KEY, parse_metadata
from pipeline.weights import read_safetensors, state_tensors


@dataclass
class Checkpoint:
    epoch: int  # epochs completed
    step: int  # steps completed within `epoch`
    totals: dict[str, float]  # EpochTotals of the partial epoch
    history: list[dict[str, Any]]  # one train_log row per completed epoch
    params_sha256: str
    data_sha256: str
    model: dict[str, Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    average: dict[str, Tensor] | None = None  # weight average (EMA) state, when on
    rng: dict[str, Any] = field(default_factory=dict)
    code_sha256: str = ""  # of the training code (pipeline/*.py) that wrote it
    params: dict[str, Any] | None = None  # the model and train params by name, for `cifar10 checkpoints`
    threads: int | None = None  # torch's CPU threads per process: a CPU run resumes with the same count
    processes: int = 1  # of the run that wrote it


def capture_rng() -> dict[str, Any]:
    """Every global RNG state: Python, NumPy, torch CPU and each CUDA device."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy state is ("MT19937", keys, position, ...)
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "rest": [position, has_gauss, cached_gaussian],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, *state["numpy"]["rest"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    tensors = {f"model.{name}": tensor for name, tensor in checkpoint.model.items()}
    if checkpoint.average is not None:
        tensors |= {f"average.{name}": tensor for name, tensor in checkpoint.average.items()}
    groups = [  # a learning rate kept on the device is a one-element tensor: stored as its value
        {key: value.item() if isinstance(value, Tensor) else value for key, value in group.items()}
        for group in checkpoint.optimizer["param_groups"]
    ]
    optimizer_json: dict[str, Any] = {"param_groups": groups, "state": {}}
    for index, values in checkpoint.optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                optimizer_json["state"].setdefault(str(index), {})[key] = value
    rng = checkpoint.rng
    tensors["rng.torch"] = rng["torch"]
    tensors["rng.numpy"] = rng["numpy"]["keys"]
    for device, state in enumerate(rng["cuda"]):
        tensors[f"rng.cuda.{device}"] = state
    metadata = {
        "format": FORMAT,
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "totals": checkpoint.totals,
        "history": checkpoint.history,
        "params_sha256": checkpoint.params_sha256,
        "data_sha256": checkpoint.data_sha256,
        "code_sha256": checkpoint.code_sha256,
        "params": checkpoint.params,
        "threads": checkpoint.threads,
        "processes": checkpoint.processes,
        "optimizer": optimizer_json,
        "rng": {"python": rng["python"], "numpy": rng["numpy"]["rest"], "cuda": len(rng["cuda"])},
        "has_average": checkpoint.average is not None,
    }
    write_bytes(
        path, save(state_tensors(tensors), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    )


def _with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {name.removeprefix(prefix): tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; a truncated, foreign or incomplete file is a ModelFileError."""
    tensors, raw_metadata = read_safetensors(path, "checkpoint")
    metadata = parse_metadata(raw_metadata, FORMAT, path, "checkpoint")
    try:
        optimizer_json = metadata["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in _with_prefix(tensors, "optimizer.").items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
        for index, values in optimizer_json["state"].items():
            state.setdefault(int(index), {}).update(values)
        rng_json = metadata["rng"]
        rng = {
            "python": rng_json["python"],
            "numpy": {"keys": tensors["rng.numpy"], "rest": rng_json["numpy"]},
            "torch": tensors["rng.torch"],
            "cuda": [tensors[f"rng.cuda.{device}"] for device in range(rng_json["cuda"])],
        }
        return Checkpoint(
            epoch=int(metadata["epoch"]),
            step=int(metadata["step"]),
            totals=metadata["totals"],
            history=metadata["history"],
            params_sha256=metadata["params_sha256"],
            data_sha256=metadata["data_sha256"],
            model=_with_prefix(tensors, "model."),
            optimizer={"state": state, "param_groups": optimizer_json["param_groups"]},
            average=_with_prefix(tensors, "average.") if metadata["has_average"] else None,
            rng=rng,
            code_sha256=metadata.get("code_sha256", ""),
            params=metadata.get("params"),
            threads=metadata.get("threads"),
            processes=int(metadata.get("processes", 1)),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ModelFileError(f"{path}: incomplete checkpoint ({error})") from None
