"""Trainings running at once on one machine share its cores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pipeline.cores as cores
from pipeline.cores import running_trainings, share_cores
from tests.conftest import REPO


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    for name in cores.USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_each_training_takes_its_share_at_its_start_and_keeps_it(tmp_path: Path, four_cores: None) -> None:
    torch.set_num_threads(3)
    with share_cores(tmp_path) as first:
        assert first.threads == 4 and torch.get_num_threads() == 4
        with share_cores(tmp_path) as second:
            assert running_trainings(tmp_path) == 2
            assert second.threads == 2 and torch.get_num_threads() == 2
        # a thread count changed midway would change the weights' last bits: the first keeps 4
        assert first.threads == 4 and torch.get_num_threads() == 4
    assert torch.get_num_threads() == 3  # torch's count from before comes back
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_takes_its_checkpoints_thread_count(tmp_path: Path, four_cores: None) -> None:
    with share_cores(tmp_path), share_cores(tmp_path) as second:
        assert second.threads == 2
        second.continue_with(4)
        assert second.threads == 4 and torch.get_num_threads() == 4


def test_another_process_counts_and_a_dead_ones_file_does_not(tmp_path: Path, four_cores: None) -> None:
    (tmp_path / "12345-deadbeef.lock").write_text("")  # left by a training killed with -9: unlocked
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys
                from pathlib import Path
                from pipeline.cores import share_cores
                with share_cores(Path({str(tmp_path)!r})):
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
    with share_cores(tmp_path) as share:
        assert share.threads == 2  # two trainings alive on four cores
    assert not (tmp_path / "12345-deadbeef.lock").exists()
    child.stdin.write("done\n")
    child.stdin.flush()
    assert child.wait(timeout=60) == 0
    assert running_trainings(tmp_path) == 0


def test_threads_the_user_set_are_left_alone(
    tmp_path: Path, four_cores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    with share_cores(tmp_path) as first, share_cores(tmp_path) as second:
        assert first.threads == 3 and second.threads == 3 and second.user_set
        assert list(tmp_path.glob("*.lock")) == []
        second.continue_with(1)  # a checkpoint of another count: a warning, the user's count stays
        assert second.threads == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 3
