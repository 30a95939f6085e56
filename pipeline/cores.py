"""Sharing the CPU cores between trainings of this pipeline that run at once on one machine.

Each training process registers by holding an flock on a file of its own in a folder every
process of the user sees. The number of files still locked is the number of trainings running
(a file whose process died is unlocked, and removed when counted), and a training takes its share
of the cores when it starts: with `dvc queue start -j 2` on 2 cores, one thread each instead of
two each fighting over both. It keeps that thread count to its end, and a resumed run takes the
count its checkpoint was written with: the CPU's reductions split their work by thread, so
another count changes the last bits of the weights, and a run whose threads changed midway could
not be repeated.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # set by the user: theirs to choose


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


@dataclass
class CoreShare:
    """This training's thread count: its share of the cores when it started, or the user's."""

    threads: int
    user_set: bool  # OMP_NUM_THREADS or MKL_NUM_THREADS chose it: never changed here

    def continue_with(self, threads: int) -> None:
        """Take the thread count a checkpoint was written with, so the run continues bit for bit."""
        if threads == self.threads:
            return
        if self.user_set:
            logger.warning(
                "the checkpoint was written with %d thread(s), this run has %d (%s): the weights "
                "will differ in their last bits from an uninterrupted run",
                threads,
                self.threads,
                " / ".join(USER_THREAD_VARIABLES),
            )
            return
        logger.info(
            "resuming with the %d thread(s) the run was checkpointed with (its share now: %d), "
            "so it continues bit for bit",
            threads,
            self.threads,
        )
        torch.set_num_threads(threads)
        self.threads = threads


@contextlib.contextmanager
def share_cores(folder: Path | None = None) -> Iterator[CoreShare]:
    """Register this training for as long as the block runs, with the threads set to its share.

    The thread count is chosen once, here; torch's previous count comes back at the end.
    """
    previous = torch.get_num_threads()
    if any(os.environ.get(name) for name in USER_THREAD_VARIABLES):
        yield CoreShare(previous, user_set=True)
        return
    folder = folder or registry_folder()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    claiming, path = folder / f"{name}.claiming", folder / f"{name}.lock"
    with claiming.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.replace(claiming, path)  # counted only once locked: never taken for a dead training's file
        running = max(1, running_trainings(folder))
        cores = available_cores()
        share = CoreShare(max(1, cores // running), user_set=False)
        if running > 1:
            logger.info(
                "%d training(s) of this pipeline running on %d cores: %d thread(s) for this one, "
                "kept to its end",
                running,
                cores,
                share.threads,
            )
        torch.set_num_threads(share.threads)
        try:
            yield share
        finally:
            torch.set_num_threads(previous)
            fcntl.flock(handle, fcntl.LOCK_UN)
            path.unlink(missing_ok=True)
