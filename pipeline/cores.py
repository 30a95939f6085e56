"""Sharing the CPU cores between trainings of this pipeline that run at once on one machine.

Each training process registers by holding an flock on a file of its own in a folder every
process of the user sees. The number of files still locked is the number of trainings running
(a file whose process died is unlocked, and removed when counted), and each takes its share of
the cores: with `dvc queue start -j 2` on 2 cores, one thread each instead of two each fighting
over both. The share is looked at again while training runs, so it grows back when others end.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch

logger = logging.getLogger(__name__)

USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # set by the user: theirs to choose
RECHECK_SECONDS = 2.0


def registry_folder() -> Path:
    """One folder per user on this machine, where running trainings register."""
    return Path(tempfile.gettempdir()) / f"cifar10-{os.getuid()}" / "trainings"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def running_trainings(folder: Path) -> int:
    """How many registered trainings are alive; files of dead ones are removed."""
    alive = 0
    for path in folder.glob("*.lock"):
        try:
            with path.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    alive += 1
                    continue
                path.unlink(missing_ok=True)  # nobody holds it: its training has ended
        except FileNotFoundError:
            continue
    return alive


class CoreShare:
    """This process's registration, and the thread count that follows from the others'."""

    def __init__(self, folder: Path, handle: IO[str] | None) -> None:
        self.folder = folder
        self.handle = handle  # None: the user set the threads, nothing is changed
        self.cores = available_cores()
        self.threads = torch.get_num_threads()
        self.checked = 0.0

    def rebalance(self, force: bool = False) -> int:
        """Set torch's threads to this process's share of the cores; return the share."""
        if self.handle is None:
            return self.threads
        now = time.monotonic()
        if not force and now - self.checked < RECHECK_SECONDS:
            return self.threads
        self.checked = now
        running = max(1, running_trainings(self.folder))
        share = max(1, self.cores // running)
        if share != self.threads:
            logger.info(
                "%d training(s) of this pipeline running on %d cores: %d thread(s) for this one",
                running,
                self.cores,
                share,
            )
            torch.set_num_threads(share)
            self.threads = share
        return share


@contextlib.contextmanager
def share_cores(folder: Path | None = None) -> Iterator[CoreShare]:
    """Register this training for as long as the block runs, with the threads set to its share."""
    if any(os.environ.get(name) for name in USER_THREAD_VARIABLES):
        yield CoreShare(folder or registry_folder(), None)
        return
    folder = folder or registry_folder()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    claiming, path = folder / f"{name}.claiming", folder / f"{name}.lock"
    with claiming.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.replace(claiming, path)  # counted only once locked: never taken for a dead training's file
        share = CoreShare(folder, handle)
        share.rebalance(force=True)
        try:
            yield share
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            path.unlink(missing_ok=True)
