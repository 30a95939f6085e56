"""The folder of checkpoints: each run's file name, listing, retention and removal.

Reads only the files' names, sizes, dates and safetensors headers (no torch), so listing
checkpoints (`cifar10 checkpoints`) starts in a fraction of a second; what is inside a
checkpoint is pipeline.checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ModelFileError
from pipeline.files import remove_stale_temporaries
from pipeline.model_card import parse_metadata, read_metadata

FORMAT = "cifar10-checkpoint/1"  # the format tag in every checkpoint's metadata
SUFFIX = ".safetensors"


def checkpoint_path(folder: Path, params_sha256: str, data_sha256: str, code_sha256: str) -> Path:
    """The checkpoint file of the run with these params, data and training code: each run has its
    own, so a checkpoint left by other params never stands in the way, going back to them resumes
    it, and code changed since never continues weights trained by the old code."""
    run = hashlib.sha256(f"{params_sha256}:{data_sha256}:{code_sha256}".encode()).hexdigest()
    return folder / f"{run[:16]}{SUFFIX}"


@dataclass(frozen=True)
class Retention:
    """How much checkpoint state a folder keeps: by total size and by age, never by count."""

    max_bytes: int
    max_age_seconds: float


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint files in `folder`, newest first (half-written temporaries excluded)."""
    if not folder.is_dir():
        return []
    files = [path for path in folder.glob(f"*{SUFFIX}") if not path.name.startswith(".")]
    return sorted(files, key=lambda path: path.stat().st_mtime, reverse=True)


def prune_checkpoints(keep: Path, retention: Retention, now: float | None = None) -> list[Path]:
    """Delete checkpoints beside `keep` (never `keep` itself) older than the age limit, then the
    oldest ones while the folder holds more than the size limit; return what was deleted.

    Other runs' checkpoints are never deleted merely because there are many of them: a long
    interrupted run keeps its progress while a few short tries come and go.
    """
    now = time.time() if now is None else now
    others = [path for path in checkpoint_files(keep.parent) if path != keep]
    removed = [path for path in others if now - path.stat().st_mtime > retention.max_age_seconds]
    kept = [path for path in others if path not in removed]
    total = (keep.stat().st_size if keep.exists() else 0) + sum(path.stat().st_size for path in kept)
    for path in reversed(kept):  # oldest first
        if total <= retention.max_bytes:
            break
        total -= path.stat().st_size
        removed.append(path)
    for path in removed:
        remove_checkpoint(path)
    return removed


@dataclass(frozen=True)
class CheckpointInfo:
    """What `cifar10 checkpoints` lists about one file, from its header."""

    path: Path
    size: int  # bytes
    modified: float  # seconds since the epoch
    epoch: int | None  # epochs completed (None: not readable as a checkpoint)
    step: int | None
    params: dict[str, Any] | None
    params_sha256: str | None = None
    data_sha256: str | None = None
    code_sha256: str | None = None  # of the training code that wrote it (pipeline.source)

    @property
    def run_id(self) -> str:
        """The name `cifar10 checkpoints` lists it by: the file name without its suffix."""
        return self.path.name.removesuffix(SUFFIX)


def describe_checkpoints(folder: Path) -> list[CheckpointInfo]:
    found = []
    for path in checkpoint_files(folder):
        status = path.stat()
        try:
            metadata = parse_metadata(read_metadata(path, "checkpoint"), FORMAT, path, "checkpoint")
            found.append(
                CheckpointInfo(
                    path,
                    status.st_size,
                    status.st_mtime,
                    int(metadata["epoch"]),
                    int(metadata["step"]),
                    metadata.get("params"),
                    metadata.get("params_sha256"),
                    metadata.get("data_sha256"),
                    metadata.get("code_sha256"),
                )
            )
        except (ModelFileError, KeyError, ValueError, TypeError):  # listed as not readable
            found.append(CheckpointInfo(path, status.st_size, status.st_mtime, None, None, None))
    return found


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint file and any half-written temporary of it."""
    path.unlink(missing_ok=True)
    remove_stale_temporaries(path)
