"""Locks on files: one run of a stage at a time in a workspace, and counts of running processes.

The lock is `flock` on an open file. The operating system releases it when its holder exits in
any way, kill -9 included, so a lock left by a dead process is taken over without asking, and
the file's content (who holds it) only matters while the lock is held. Another workspace (a copy
of the repository, or DVC's temporary folders for queued experiments) has its own lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


@contextlib.contextmanager
def exclusive(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the lock at `path` while the body runs; if another process holds it, refuse at once
    (with `wait`, wait until it is free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PipelineError(
                f"{what} is already running in this workspace ({holder}); wait for it or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield  # the lock goes when the file is closed, or when the process dies


@contextlib.contextmanager
def registered(folder: Path) -> Iterator[None]:
    """Count this process among those registered in `folder` while the body runs.

    It holds an flock on a file of its own there, which takes its counted name only once locked,
    so a count never takes it for a dead process's file. The file is readable by every user, so
    a folder that users share counts all of them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    claiming, path = folder / f"{name}.claiming", folder / f"{name}.lock"
    descriptor = os.open(claiming, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fchmod(descriptor, 0o644)  # whatever the umask: other users count it
    with os.fdopen(descriptor, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.replace(claiming, path)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            path.unlink(missing_ok=True)


def count_registered(folder: Path) -> int:
    """How many processes registered in `folder` are alive; files of dead ones are removed."""
    alive = 0
    for path in folder.glob("*.lock"):
        try:
            with path.open("r") as handle:  # flock needs no write access: any user's file counts
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    alive += 1
                    continue
                with contextlib.suppress(PermissionError):  # another user's, in a sticky folder
                    path.unlink(missing_ok=True)  # nobody holds it: its process has ended
        except FileNotFoundError:
            continue
    return alive
