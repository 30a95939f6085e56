"""Atomic output: every file or folder appears complete at its final path or not at all.

A temporary sibling is written, flushed to disk (fsync) and renamed over the target with
os.replace, which is atomic on POSIX file systems. A crash at any point leaves either the old
output or the new one, plus at most a temporary file that the next run removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMPORARY_MARKER = ".tmp-"
CHUNK_BYTES = 1 << 20


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries left beside `target` by a run that was killed mid-write."""
    if not target.parent.is_dir():
        return
    for leftover in target.parent.glob(f".{target.name}{TEMPORARY_MARKER}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `target`; on success it replaces `target`, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{target.name}{TEMPORARY_MARKER}", dir=target.parent
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_file(target, "wb") as handle:
        handle.write(data)


def write_text(target: Path, text: str) -> None:
    with atomic_file(target, "w") as handle:
        handle.write(text)


def write_json(target: Path, value: Any) -> None:
    """JSON with finite numbers only (allow_nan=False raises on NaN or infinity)."""
    write_text(target, json.dumps(value, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it takes `target`'s place.

    The old folder is first renamed aside and deleted only after the new one is in place, so
    a crash leaves the old or the new folder (and a temporary one), never a mix of both.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = target.parent / f".{target.name}{TEMPORARY_MARKER}previous"
    if previous.exists() and not target.exists():  # killed between the two renames below
        os.replace(previous, target)
    remove_stale_temporaries(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMPORARY_MARKER}", dir=target.parent))
    try:
        yield temporary
        for path in temporary.iterdir():
            path.chmod(0o644)
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        temporary.chmod(0o755)
        if target.exists():
            os.replace(target, previous)
        os.replace(temporary, target)
        fsync_directory(target.parent)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
