"""The GPU lease with an injected device count: trainings in separate processes, as on a machine
with several GPUs (no GPU needed; what CUDA would report is given)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.gpu_lease import leased_gpus, visible_devices
from tests.conftest import REPO

# A training's lease, as the train stage takes it, held until the test closes the process's stdin.
HOLDER = textwrap.dedent(
    """
    import logging, sys
    from pipeline.gpu_lease import leased_gpus
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    folder, processes, gpus, visible = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    environment = {"CIFAR10_GPU_LEASES": folder} | ({"CUDA_VISIBLE_DEVICES": visible} if visible else {})
    with leased_gpus("auto", processes, environment, gpu_count=lambda: gpus):
        print("holding", environment["CUDA_VISIBLE_DEVICES"], flush=True)
        sys.stdin.read()
    """
)


class Training:
    """A process holding (or waiting for) a lease; `line()` is its next line of output."""

    def __init__(self, folder: Path, processes: int = 1, gpus: int = 2, visible: str = "") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder), str(processes), str(gpus), visible],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def line(self) -> str:
        """The next line it prints (a generous limit guards against a hang, nothing is timed)."""
        return self.lines.get(timeout=120)

    def finish(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=120) == 0


@pytest.fixture
def trainings() -> Iterator[list[Training]]:
    started: list[Training] = []
    yield started
    for training in started:
        training.process.kill()
        training.process.wait()


def test_each_training_gets_its_own_gpu_and_a_third_waits_until_one_ends(
    tmp_path: Path, trainings: list[Training]
) -> None:
    first = Training(tmp_path)
    trainings.append(first)
    assert first.line() == "GPU 0 of 2 (leased; 1 in use)" and first.line() == "holding 0"
    second = Training(tmp_path)
    trainings.append(second)
    assert second.line() == "GPU 1 of 2 (leased; 2 in use)" and second.line() == "holding 1"
    third = Training(tmp_path)
    trainings.append(third)
    assert third.line() == (
        "all 2 GPU(s) leased by other trainings; waiting for 1 to come free (1 training(s) waiting, "
        "this one included)"
    )
    first.finish()
    assert third.line() == "GPU 0 of 2 (leased; 2 in use)" and third.line() == "holding 0"


def test_a_killed_holder_frees_its_gpu(tmp_path: Path, trainings: list[Training]) -> None:
    holder = Training(tmp_path, gpus=1)
    trainings.append(holder)
    assert holder.line() == "GPU 0 of 1 (leased; 1 in use)"
    holder.process.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops the lock
    holder.process.wait()
    successor = Training(tmp_path, gpus=1)
    trainings.append(successor)
    assert successor.line() == "GPU 0 of 1 (leased; 1 in use)" and successor.line() == "holding 0"


def test_a_killed_waiter_is_not_counted_and_its_file_goes(tmp_path: Path, trainings: list[Training]) -> None:
    holder = Training(tmp_path, gpus=1)
    trainings.append(holder)
    assert holder.line() == "GPU 0 of 1 (leased; 1 in use)"
    waiter = Training(tmp_path, gpus=1)
    trainings.append(waiter)
    assert waiter.line().endswith("(1 training(s) waiting, this one included)")
    waiter.process.send_signal(signal.SIGKILL)
    waiter.process.wait()
    assert len(list((tmp_path / "waiting").glob("*.lock"))) == 1  # left behind by kill -9
    another = Training(tmp_path, gpus=1)
    trainings.append(another)
    assert another.line().endswith("(1 training(s) waiting, this one included)")
    holder.finish()
    assert another.line() == "GPU 0 of 1 (leased; 1 in use)"
    assert list((tmp_path / "waiting").iterdir()) == []  # the dead one's removed when counted


def test_cuda_visible_devices_bounds_the_choice(tmp_path: Path, trainings: list[Training]) -> None:
    bounded = Training(tmp_path, gpus=2, visible="2,3")  # CUDA counts the 2 visible ones
    trainings.append(bounded)
    assert bounded.line() == "GPU 2 of 2 (leased; 1 in use)" and bounded.line() == "holding 2"
    assert visible_devices(4, {"CUDA_VISIBLE_DEVICES": "GPU-a1, GPU-b2"}) == ["GPU-a1", "GPU-b2"]
    assert visible_devices(3, {}) == ["0", "1", "2"]


def test_a_data_parallel_run_takes_as_many_gpus_as_processes(
    tmp_path: Path, trainings: list[Training]
) -> None:
    single = Training(tmp_path, gpus=3)
    trainings.append(single)
    assert single.line() == "GPU 0 of 3 (leased; 1 in use)"
    pair = Training(tmp_path, processes=2, gpus=3)
    trainings.append(pair)
    assert pair.line() == "GPUs 1, 2 of 3 (leased; 3 in use)" and pair.line() == "holding 1,2"
    another = Training(tmp_path, processes=2, gpus=3)  # two needed, none free: it waits for both
    trainings.append(another)
    assert another.line().startswith("all 3 GPU(s) leased by other trainings; waiting for 2 to come free")
    single.finish()  # one free is not enough
    pair.finish()
    assert another.line() == "GPUs 0, 1 of 3 (leased; 2 in use)"
    too_many = leased_gpus("auto", 4, {"CIFAR10_GPU_LEASES": str(tmp_path / "other")}, gpu_count=lambda: 3)
    with pytest.raises(PipelineError, match=r"train\.nproc: 4 processes need 4 GPUs, 3 visible here"):
        too_many.__enter__()


def test_the_cpu_and_an_explicit_gpu_take_no_lease(tmp_path: Path) -> None:
    environment = {"CIFAR10_GPU_LEASES": str(tmp_path / "leases")}
    for device, gpus in (("cpu", 2), ("auto", 0), ("mps", 2), ("cuda:1", 2)):
        with leased_gpus(device, 1, environment, gpu_count=lambda gpus=gpus: gpus) as lease:
            assert lease is None, device
    assert environment == {"CIFAR10_GPU_LEASES": str(tmp_path / "leases")}  # CUDA_VISIBLE_DEVICES untouched
    assert not (tmp_path / "leases").exists()
