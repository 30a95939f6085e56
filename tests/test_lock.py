"""The workspace lock: one run of a stage at a time, taken over from a dead holder, per workspace."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.lock import exclusive
from tests.conftest import REPO

WHAT = "`cifar10 train`"


def refusal(path: Path) -> str:
    with pytest.raises(PipelineError) as caught, exclusive(path, WHAT):
        pass
    return str(caught.value)


def test_a_second_run_is_refused_and_named_until_the_first_ends(tmp_path: Path) -> None:
    path = tmp_path / ".cifar10" / "train.lock"
    with exclusive(path, WHAT):
        message = refusal(path)
        assert message.startswith(f"{WHAT} is already running in this workspace (pid {os.getpid()}, started ")
        assert message.endswith("); wait for it or stop it")
    with exclusive(path, WHAT):  # released when the first one ended
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / ".cifar10" / "train.lock"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pipeline.lock import exclusive
        with exclusive(Path({str(path)!r}), "x"):
            print("held", flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    assert f"(pid {holder.pid}, started " in refusal(path)
    holder.kill()  # SIGKILL: no cleanup runs
    holder.wait(timeout=60)
    with exclusive(path, WHAT):  # taken over without asking
        pass


def test_other_workspaces_never_block_each_other(tmp_path: Path) -> None:
    with (
        exclusive(tmp_path / "workspace" / ".cifar10" / "train.lock", WHAT),
        exclusive(tmp_path / "queued-copy" / ".cifar10" / "train.lock", WHAT),
    ):
        pass
