"""Compilation: whether a run compiles (`train.compile`), torch.compile, and Inductor's on-disk
cache of compiled code: on the CPU one cache folder per vector ISA (graphs built for one ISA crash
under another), and binaries that a killed compilation left incomplete removed before they load.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Literal

import torch
from filelock import FileLock, Timeout
from torch import nn

from pipeline.convolution import SmallMapConv2d
from pipeline.hardware import IsaClass, cpu_class, settings_for

logger = logging.getLogger(__name__)


def should_compile(
    setting: str | bool, device: torch.device, arch: str = "resnet18", isa: IsaClass | None = None
) -> bool:
    """`auto`: on for CUDA; on the CPU where it measured faster for this arch on this class of
    CPU (pipeline.hardware) and Inductor finds its C++ compiler."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cpu":
        wanted = settings_for(isa or cpu_class()).compile(arch)
        return wanted and shutil.which(os.environ.get("CXX", "g++")) is not None
    return device.type == "cuda"


def compile_model(module: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile for the device; on the CPU with Inductor's cache kept per vector ISA and
    rid of the binaries an interrupted compilation left incomplete."""
    if device.type == "cpu":
        cache = inductor_cache_base()
        if removed := remove_incomplete_binaries(cache):
            logger.warning(
                "removed %d incomplete compiled file(s) from Inductor's cache %s, left by an "
                "interrupted compilation; they are compiled again",
                len(removed),
                cache,
            )
        use_inductor_cache_of_this_vector_isa()
        if torch_release() < (2, 14):
            keep_small_map_convolutions_eager(module)
    return torch.compile(module)  # type: ignore[return-value]


def torch_release() -> tuple[int, int]:
    """(major, minor) of the installed torch: 2.14.1+cpu -> (2, 14)."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def keep_small_map_convolutions_eager(module: nn.Module) -> None:
    """Leave the matrix-product convolutions (pipeline.convolution) out of the compiled graph.

    torch 2.13's Inductor compiles their weight gradient (a custom autograd Function) into code
    that corrupts the heap: measured with 2.13.0+cpu on a Xeon with AMX, `free(): invalid next
    size` and an abort in the first backward of the tutorial net; 2.14.1 compiles it correctly.
    Run eager, they keep their speed; the rest of the network is compiled."""
    for layer in module.modules():
        if isinstance(layer, SmallMapConv2d):
            layer.forward = torch.compiler.disable(layer.forward)  # type: ignore[method-assign,no-untyped-call]


INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
VECTOR_ISA_FOLDER_PREFIX = "vector-isa-"


def inductor_cache_base() -> Path:
    """The folder Inductor's cache would use, above the per-ISA folder an earlier call chose."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get(INDUCTOR_CACHE_VARIABLE)
    base = Path(chosen) if chosen else Path(default_cache_dir())
    return base.parent if base.name.startswith(VECTOR_ISA_FOLDER_PREFIX) else base


def use_inductor_cache_of_this_vector_isa() -> Path:
    """Point Inductor's cache at a sub-folder named after the vector ISA its C++ code is generated
    for (`vector-isa-avx512-avx512_vnni`, `vector-isa-avx2`, ...), under the folder it would use.

    In torch 2.14.1 the key of Inductor's FX graph cache does not contain that ISA, and (by all
    signs) a cached graph's C++ is built again for the ISA of the process that loads it. A graph
    generated for AVX2 (8 floats a vector) and loaded under AVX-512 (16) then fails: measured here,
    `malloc(): corrupted size vs. prev_size` or a segmentation fault on the first step; the other
    way round, a NaN loss at step 1. That happens whenever one cache folder sees two ISAs: runs
    with `ATEN_CPU_CAPABILITY` (the benchmarks' emulation), or a cache folder shared by machines of
    different classes. Separate folders keep every graph with the ISA it was generated for. The
    folder chosen is kept in the environment, where Inductor and its compile workers read it."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa_name = re.sub(r"[^a-z0-9_]+", "-", str(pick_vec_isa()).lower()).strip("-")
    folder = inductor_cache_base().absolute() / f"{VECTOR_ISA_FOLDER_PREFIX}{isa_name}"
    os.environ[INDUCTOR_CACHE_VARIABLE] = str(folder)
    return folder


def remove_incomplete_binaries(folder: Path) -> list[Path]:
    """Delete the shared objects and object files under `folder` (an Inductor cache) that are not
    complete ELF files; Inductor builds a missing one again. Returns the files deleted.

    Inductor reuses a cached binary whenever its file exists. A run killed while the compiler or
    linker wrote one (Ctrl-C during the first compiled epoch, an out-of-memory kill) can leave it
    empty or cut short, and every later compiled run then stops at its first step: measured here
    with torch 2.14.1, `ImportError: ... file too short` for an empty .so (pytorch/pytorch#102539)
    and a bus error with no message for one cut short. GNU ld puts the section header table at
    the end of the file, so a file that ends before that table ends is incomplete. A file is
    checked under the lock Inductor builds it under (`locks/<key>.lock` beside its folder) and
    left alone while another process holds that lock: it is being built."""
    removed: list[Path] = []
    binaries = sorted(path for path in folder.rglob("*") if path.suffix in (".so", ".o"))
    for path in binaries:
        if not path.is_file() or is_complete_elf(path):
            continue
        lock = FileLock(path.parent.parent / "locks" / f"{path.name.split('.')[0]}.lock", timeout=0)
        try:
            with lock:
                if path.is_file() and not is_complete_elf(path):
                    path.unlink()
                    removed.append(path)
        except Timeout:
            continue
    return removed


def is_complete_elf(path: Path) -> bool:
    """Whether `path` starts with an ELF header and is long enough to hold its section header
    table (for 64-bit files; a 32-bit one needs the magic number only)."""
    with path.open("rb") as file:
        header = file.read(64)
    if len(header) < 16 or header[:4] != b"\x7fELF":
        return False
    if header[4] != 2:  # ELFCLASS64 only: 32-bit headers lay out these fields elsewhere
        return True
    if len(header) < 64:
        return False
    order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
    table_offset = int.from_bytes(header[0x28:0x30], order)  # e_shoff
    entry_size = int.from_bytes(header[0x3A:0x3C], order)  # e_shentsize
    entries = int.from_bytes(header[0x3C:0x3E], order)  # e_shnum
    return path.stat().st_size >= table_offset + entry_size * entries
