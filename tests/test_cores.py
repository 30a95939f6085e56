"""Trainings running at once on one machine share its cores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pipeline.cores as cores
from pipeline.cores import choose_threads, register_training
from pipeline.lock import count_registered
from tests.conftest import REPO


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch, training_registry: Path) -> None:
    monkeypatch.setattr(cores, "available_cores", lambda: 4)


def test_each_training_takes_its_share_when_its_first_step_is_due(tmp_path: Path, four_cores: None) -> None:
    with register_training(tmp_path) as first:
        assert first is not None and choose_threads(first, 2, None) == 4  # alone
        with register_training(tmp_path) as second:
            assert count_registered(tmp_path) == 2
            assert choose_threads(second, 2, None) == 2
        assert first.share() == (1, 4)  # what a training starting now would take
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_takes_its_checkpoints_thread_count(
    tmp_path: Path, four_cores: None, caplog: pytest.LogCaptureFixture
) -> None:
    with register_training(tmp_path), register_training(tmp_path) as second, caplog.at_level("INFO"):
        assert choose_threads(second, 2, checkpointed=4) == 4  # its share would be 2
    assert "with the 4 thread(s) the run was checkpointed with (its share now: 2)" in caplog.text


def test_another_process_counts_and_a_dead_ones_file_does_not(tmp_path: Path, four_cores: None) -> None:
    (tmp_path / "12345-deadbeef.lock").write_text("")  # left by a training killed with -9: unlocked
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys
                from pathlib import Path
                from pipeline.cores import register_training
                with register_training(Path({str(tmp_path)!r})):
                    print("registered", flush=True)
                    sys.stdin.readline()
            """),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "registered"
    with register_training(tmp_path) as registration:
        assert registration is not None and registration.share() == (2, 2)  # two alive on four cores
    assert not (tmp_path / "12345-deadbeef.lock").exists()
    child.stdin.write("done\n")
    child.stdin.flush()
    assert child.wait(timeout=60) == 0
    assert count_registered(tmp_path) == 0


def test_threads_the_user_set_are_left_alone(
    tmp_path: Path, four_cores: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with register_training(tmp_path) as first, register_training(tmp_path) as second:
        assert first is None and second is None
        assert list(tmp_path.glob("*.lock")) == []
        assert choose_threads(second, 3, None) == 3
        assert choose_threads(second, 3, checkpointed=1) == 3  # the user's count wins, with a warning
    assert "the checkpoint was written with 1 thread(s), this run has 3" in caplog.text
