"""Data-parallel training with PyTorch's own engine: torch.distributed, DDP and its elastic launcher.

`cifar10 train` with train.nproc > 1 starts that many workers through torch.distributed's
elastic launcher (what torchrun uses); under an external `torchrun` the environment
(WORLD_SIZE, RANK, LOCAL_RANK) says so and the process joins. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipeline.errors import PipelineError, TrainingInterrupted

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a multi-process run."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on any of them (a collective: all must call it)."""
        return bool(self.reduce_sum(torch.tensor([float(flag)], device=device)).item())

    def broadcast_from_main(self, module: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (a collective: all must call it).

        Each process keeps its own BatchNorm running statistics (DDP copies rank 0's only at the
        next training forward) and its own weight average; after this, all hold the weights
        that rank 0 saves.
        """
        for tensor in module.state_dict().values():  # detached views of the module's own storage
            dist.broadcast(tensor, src=0)


def from_environment() -> Distributed | None:
    """The run this process belongs to, from torchrun's variables; None outside such a run.

    A run of one process under torchrun is a DistributedDataParallel run too, so
    `torchrun --nproc-per-node 1` tries the same path as a multi-process run.
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    return Distributed(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


# Set by `launch` for its workers: the launching process holds the workspace lock for them.
LAUNCHED_BY = "CIFAR10_LAUNCHED_BY"


def holds_workspace_lock(context: Distributed | None) -> bool:
    """Whether this process takes the stage's workspace lock: a single process, the launcher of
    local workers, or rank 0 of a run started by an external torchrun."""
    if context is None:
        return True
    return context.is_main and LAUNCHED_BY not in os.environ


def quiet_unless_main(context: Distributed) -> None:
    """Only rank 0 logs progress; the others report warnings and errors."""
    if not context.is_main:
        for name in ("pipeline", "stages"):
            logging.getLogger(name).setLevel(logging.WARNING)


def initialize(context: Distributed, device_type: str) -> None:
    """Join the process group (nccl for CUDA, gloo for CPU) and share the CPU cores between local workers."""
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.local_world_size))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(
    nproc: int, arguments: Sequence[str], resume_hint: str = "run `cifar10 train` again to resume"
) -> None:
    """Run `python -m stages <arguments>` in `nproc` local workers through torch's elastic launcher.

    A worker that fails makes the whole run fail; the error names the rank and its exit code.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"cifar10-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone` picks
        max_restarts=0,
        monitor_interval=0.1,
    )
    logger.info("starting %d worker processes", nproc)
    os.environ[LAUNCHED_BY] = str(os.getpid())  # the workers inherit the environment
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "stages", *arguments)
    except ChildFailedError as error:
        first_rank, failure = error.get_first_failure()  # the earliest: the others may have followed it
        code = failure.exitcode
        if code > 128 and code - 128 in (signal.SIGINT, signal.SIGTERM):
            raise TrainingInterrupted(
                f"training interrupted by {signal.Signals(code - 128).name}; {resume_hint}",
                code - 128,
            ) from None
        reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise PipelineError(
            f"training failed: worker rank {first_rank} stopped with {reason}; no outputs were written"
        ) from None
    except SignalException as error:
        raise TrainingInterrupted(
            f"training interrupted by {error.sigval.name}; {resume_hint}",
            int(error.sigval),
        ) from None
    finally:
        del os.environ[LAUNCHED_BY]
