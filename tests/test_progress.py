"""Progress off a terminal: a line at each step of the way, but never more than one every few seconds."""

from __future__ import annotations

import pytest

import pipeline.progress as progress_module
from pipeline.progress import progress


def test_off_a_terminal_at_most_one_line_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level("INFO", logger="pipeline.progress"), progress("copy", 100, log_every=0.1) as advance:
        for _ in range(10):  # a fast local copy: ten tenths within the same second
            advance(10)
        assert caplog.messages == []
        clock[0] += progress_module.LOG_INTERVAL
        advance(0)
        for _ in range(3):  # a slow transfer: one line per interval at most
            clock[0] += progress_module.LOG_INTERVAL
            advance(10)
    assert len(caplog.messages) == 3 and all(message.startswith("copy: ") for message in caplog.messages)
