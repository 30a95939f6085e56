"""One run of a stage at a time in a workspace: an exclusive lock on a file in the workspace.

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
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at `path` while the body runs; if another process holds it, refuse at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
