"""Progress reporting: a rich progress bar on a terminal, plain log lines (or nothing) otherwise."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

logger = logging.getLogger(__name__)

Advance = Callable[[float], None]
LOG_INTERVAL = 5.0  # seconds: off a terminal, at most one progress line this often


@contextlib.contextmanager
def progress(
    description: str, total: float | None, *, in_bytes: bool = False, log_every: float | None = None
) -> Iterator[Advance]:
    """Yield `advance(amount)`. Off a terminal, log a line at every `log_every` fraction of `total`,
    at most one every LOG_INTERVAL seconds (a fast local copy logs one line or none)."""
    if sys.stderr.isatty():
        counter = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
        columns = (TextColumn("{task.description}"), BarColumn(), *counter, TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount: bar.advance(task, amount)
        return
    done = 0.0
    next_report = log_every
    last_line = time.monotonic()

    def advance(amount: float) -> None:
        nonlocal done, next_report, last_line
        done += amount
        if total and next_report is not None and log_every is not None and done >= next_report * total:
            while next_report <= done / total:
                next_report += log_every
            now = time.monotonic()
            if now - last_line >= LOG_INTERVAL:
                last_line = now
                logger.info("%s: %.0f%%", description, 100 * done / total)

    yield advance
