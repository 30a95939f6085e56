"""Sharing the CPU cores between trainings of this pipeline that run at once on one machine.

Each training process registers by holding an flock on a file of its own in a folder every
process of the user sees. The number of files still locked is the number of trainings running
(a file whose process died is unlocked, and removed when counted). A training registers before
its set-up and takes its share of the cores when its first step is due, so trainings started
together (`dvc queue start -j 2` on 2 cores: one thread each, instead of two each fighting over
both) see each other. It keeps that thread count to its end, and a resumed run takes the count
its checkpoint was written with: the CPU's reductions split their work by thread, so another
count changes the last bits of the weights, and a run whose count changed midway could not be
repeated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.lock import count_registered, registered

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


@dataclass(frozen=True)
class Registration:
    """This training's place among the trainings running; it counts while its block runs."""

    folder: Path

    def share(self) -> tuple[int, int]:
        """The trainings running now (this one included) and this one's share of the cores."""
        running = max(1, count_registered(self.folder))
        return running, max(1, available_cores() // running)


@contextlib.contextmanager
def register_training(folder: Path | None = None) -> Iterator[Registration | None]:
    """Count this training among the running ones for as long as the block runs.

    Yields None when the user chose the threads (OMP_NUM_THREADS or MKL_NUM_THREADS): nothing
    is shared then, and the training neither counts nor changes its threads.
    """
    if any(os.environ.get(name) for name in USER_THREAD_VARIABLES):
        yield None
        return
    folder = folder or registry_folder()
    with registered(folder):
        yield Registration(folder)


def choose_threads(registration: Registration | None, current: int, checkpointed: int | None) -> int:
    """The thread count a CPU training keeps from its first step to its end.

    `current` is torch's count now, `checkpointed` the count a resumed run's checkpoint was
    written with (None for a fresh start). A resumed run takes its checkpoint's count, so it
    continues bit for bit; a fresh one its share of the cores; with the user's threads, theirs.
    """
    if registration is None:
        if checkpointed is not None and checkpointed != current:
            logger.warning(
                "the checkpoint was written with %d thread(s), this run has %d (%s): the weights "
                "will differ in their last bits from an uninterrupted run",
                checkpointed,
                current,
                " / ".join(USER_THREAD_VARIABLES),
            )
        return current
    running, share = registration.share()
    if checkpointed is not None:
        if checkpointed != share:
            logger.info(
                "resuming with the %d thread(s) the run was checkpointed with (its share now: %d), "
                "so it continues bit for bit",
                checkpointed,
                share,
            )
        return checkpointed
    if running > 1:
        logger.info(
            "%d training(s) of this pipeline running on %d cores: %d thread(s) for this one, kept to its end",
            running,
            available_cores(),
            share,
        )
    return share
