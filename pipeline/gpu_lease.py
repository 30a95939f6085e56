"""A GPU of its own for each training on a machine: a lease the kernel releases on any exit.

Each GPU has a lock file in a folder every checkout of the machine shares (`/tmp/cifar10-gpu-
leases`, or $CIFAR10_GPU_LEASES). A training whose device resolves to CUDA takes a free one (a
DistributedDataParallel run with `train.nproc=k` takes k) with a non-blocking `flock`, and keeps
the open file for as long as it runs: the kernel drops the lock when the process exits in any way,
`kill -9` included, so a lease can never outlive its holder. The leased GPUs become the process's
CUDA_VISIBLE_DEVICES before CUDA initialises, so `cuda` (and each worker's `cuda:<local rank>`)
is a leased GPU. When every GPU is leased, a training waits, says so once, and takes the first
that comes free, rather than sharing a GPU's memory. CUDA_VISIBLE_DEVICES, when set, bounds the
choice. Nothing here changes what is trained: the lease is not a param.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.errors import PipelineError
from pipeline.lock import count_registered, registered

logger = logging.getLogger(__name__)

FOLDER_VARIABLE = "CIFAR10_GPU_LEASES"
DEFAULT_FOLDER = Path("/tmp/cifar10-gpu-leases")  # machine-wide: GPUs are shared by every user
VISIBLE_VARIABLE = "CUDA_VISIBLE_DEVICES"
POLL_SECONDS = 0.5  # how often a waiting training looks for a GPU come free


def lease_folder(environment: Mapping[str, str] = os.environ) -> Path:
    return Path(environment.get(FOLDER_VARIABLE) or DEFAULT_FOLDER)


def visible_devices(count: int, environment: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs):
    that variable's entries when it is set, else 0..count-1; `count` is what CUDA reports."""
    setting = environment.get(VISIBLE_VARIABLE)
    if setting is None:
        return [str(index) for index in range(count)]
    entries = [entry.strip() for entry in setting.split(",") if entry.strip()]
    return entries[:count]


def _open_lock(path: Path) -> IO[Any]:
    """The device's lock file, made readable and writable by every user of the machine."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):  # another user's file: already shared
        os.fchmod(descriptor, 0o666)
    return os.fdopen(descriptor, "r+")


def _try_lock(handle: IO[Any]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _gpus_in_use(folder: Path) -> int:
    """How many GPUs' lock files are locked by a running process (files stay: see take)."""
    count = 0
    for path in folder.glob("gpu-*.lock"):
        with contextlib.suppress(OSError), _open_lock(path) as handle:
            if _try_lock(handle):
                fcntl.flock(handle, fcntl.LOCK_UN)
            else:
                count += 1
    return count


@dataclass
class Lease:
    """The GPUs a process holds; the locks go when the process does, or with release()."""

    devices: list[str]  # as CUDA_VISIBLE_DEVICES names them
    of: int  # GPUs this process could choose from
    handles: list[IO[Any]] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for handle in self.handles:
            handle.close()  # closing the file drops its flock
        self.handles.clear()


def take(
    devices: Sequence[str],
    count: int,
    folder: Path,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Lease:
    """Lease `count` of `devices`, waiting (and saying so once) while fewer are free."""
    if count > len(devices):
        raise PipelineError(
            f"train.nproc: {count} processes need {count} GPUs, {len(devices)} visible here "
            f"({VISIBLE_VARIABLE}={','.join(devices)})"
        )
    waiting = folder / "waiting"  # the trainings waiting for a lease register here
    waiting.mkdir(parents=True, exist_ok=True)
    for shared in (folder, waiting):
        with contextlib.suppress(OSError):  # every user's trainings lease here
            shared.chmod(0o1777)
    with contextlib.ExitStack() as registration:
        said = False
        while True:
            # a GPU's lock file is never removed: a training may hold it open to lock it
            handles: list[IO[Any]] = []
            taken: list[str] = []
            for device in devices:
                handle = _open_lock(folder / f"gpu-{device}.lock")
                if _try_lock(handle):
                    handles.append(handle)
                    taken.append(device)
                    if len(taken) == count:
                        return Lease(taken, len(devices), handles)
                else:
                    handle.close()
            for handle in handles:  # not enough free: hold none while waiting
                handle.close()
            if not said:
                registration.enter_context(registered(waiting))
                logger.info(
                    "all %d GPU(s) leased by other trainings; waiting for %d to come free (%d "
                    "training(s) waiting, this one included)",
                    len(devices),
                    count,
                    count_registered(waiting),
                )
                said = True
            sleep(POLL_SECONDS)


def describe(lease: Lease, folder: Path) -> str:
    """`GPU 2 of 4 (leased; 3 in use)`: the GPUs taken, and how many of the machine's are leased."""
    label = "GPU" if len(lease.devices) == 1 else "GPUs"
    return f"{label} {', '.join(lease.devices)} of {lease.of} (leased; {_gpus_in_use(folder)} in use)"


@contextlib.contextmanager
def leased_gpus(
    device_setting: str,
    processes: int,
    environment: dict[str, str] | os._Environ[str] = os.environ,
    *,
    gpu_count: Callable[[], int] | None = None,
) -> Iterator[Lease | None]:
    """For a training on this machine: when `device_setting` (auto or cuda) resolves to CUDA,
    lease `processes` GPUs, make them the process's CUDA_VISIBLE_DEVICES and log one line; the
    lease ends with the block (or the process). Other devices (cpu, mps), and an explicit
    `cuda:N`, take none. Call it before anything initialises CUDA."""
    if device_setting not in ("auto", "cuda"):
        yield None
        return
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count  # NVML: counts without initialising CUDA
    devices = visible_devices(gpu_count(), environment)
    if not devices:
        yield None
        return
    folder = lease_folder(environment)
    lease = take(devices, processes, folder)
    try:
        environment[VISIBLE_VARIABLE] = ",".join(lease.devices)
        logger.info(describe(lease, folder))
        yield lease
    finally:
        lease.release()
