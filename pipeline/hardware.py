"""What is fastest on the CPU at hand: precision, compilation and convolution routes by instruction set.

CPUs fall into classes by the matrix instructions oneDNN and ATen can use: AMX (bf16 tiles, Xeon
since Sapphire Rapids), AVX-512 with AVX512_BF16 but no AMX (Cooper Lake, Zen 4), AVX-512
without bf16 (Skylake to Ice Lake servers), AVX2 (most laptops and desktops). Each class gets the
settings measured fastest on it with benchmarks/bench_train.py and bench_convolution.py (tables in
benchmarks/results/cpu-<class>*.md; classes other than the development machine's are emulated by
limiting oneDNN and ATen, which this module honours too):

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16   oneDNN without AMX
    ONEDNN_MAX_CPU_ISA=AVX512_CORE        oneDNN without bf16 instructions
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2   AVX2 only

bf16 pays with AMX, and with AVX512_BF16 alone (ResNet-18 about 2x fp32 on a Zen 4 EPYC, with or
without the small-map routes); without bf16 instructions every bf16 operation is emulated, so
those classes train in fp32.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IsaClass = Literal["other", "avx2", "avx512", "avx512-bf16", "amx"]
CLASSES: tuple[IsaClass, ...] = ("other", "avx2", "avx512", "avx512-bf16", "amx")  # weakest first
NATIVE_BF16: frozenset[IsaClass] = frozenset({"avx512-bf16", "amx"})

# oneDNN's ISA names (its documentation, "CPU Dispatcher Control") -> the class they allow at most
ONEDNN_LIMITS: dict[str, IsaClass] = {
    "SSE41": "other",
    "AVX": "other",
    "AVX2": "avx2",
    "AVX2_VNNI": "avx2",
    "AVX2_VNNI_2": "avx2",
    "AVX512_CORE": "avx512",
    "AVX512_CORE_VNNI": "avx512",
    "AVX512_CORE_BF16": "avx512-bf16",
    "AVX512_CORE_FP16": "avx512-bf16",
    "AVX10_1_512": "avx512-bf16",
}
# ATen's dispatch levels (ATEN_CPU_CAPABILITY) -> the class they allow at most
ATEN_LIMITS: dict[str, IsaClass] = {"default": "other", "avx2": "avx2"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere than Linux); read once."""
    if platform.system() != "Linux":
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(
        flag
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for flag in line.split(":", 1)[-1].split()
    )


def native_class(flags: frozenset[str]) -> IsaClass:
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    if {"avx512f", "avx512bw", "avx512_bf16"} <= flags:
        return "avx512-bf16"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def cpu_class(flags: frozenset[str] | None = None, environment: Mapping[str, str] | None = None) -> IsaClass:
    """The class whose instructions oneDNN and ATen will use here: the CPU's own, lowered by
    ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY when they are set."""
    environment = os.environ if environment is None else environment
    found = native_class(cpu_flags() if flags is None else flags)
    limits = [
        ONEDNN_LIMITS.get(environment.get("ONEDNN_MAX_CPU_ISA", "").upper()),
        ATEN_LIMITS.get(environment.get("ATEN_CPU_CAPABILITY", "").lower()),
    ]
    for limit in limits:
        if limit is not None and CLASSES.index(limit) < CLASSES.index(found):
            found = limit
    return found


@dataclass(frozen=True)
class Routes:
    """Where `pipeline.convolution.SmallMapConv2d` leaves oneDNN for matrix products (see there)."""

    matmul_max_pixels: int  # outputs of at most this many pixels: im2col + one matrix product
    weight_gradient_max_pixels: int  # stride 1, at most this many output pixels: weight gradient as matmul
    weight_gradient_max_pixels_strided: int  # the same for strided convolutions
    weight_gradient_min_channels: int  # ... with at least this many input channels


ONEDNN_ONLY = Routes(0, 0, 0, 0)
# benchmarks/results/cpu-convolution-amx-bf16.md: bf16 on AMX
AMX_ROUTES = Routes(4, 16, 64, 64)
# cpu-convolution-avx512-bf16.md: bf16 with AVX512_BF16, no AMX. The weight gradient as one matrix
# product wins for outputs of up to 4x4 pixels (up to 8x8 when strided: 42.7 against 52.1 ms for
# 128 -> 256, 16x16 -> 8x8) and loses above (102.8 against 65.8 ms for 128 -> 128 at 16x16);
# only a 1x1 output is faster as one matrix product.
AVX512_BF16_ROUTES = Routes(1, 16, 64, 64)
# cpu-convolution-avx512-fp32.md (emulated): fp32 with AVX-512. oneDNN wins almost everywhere
# (139.3 against 326.0 ms for 128 -> 128 at 16x16); the weight gradient as a matrix product wins by
# 5-10% for strided outputs of up to 4x4 pixels and for 2x2 outputs, with 128 or more channels.
AVX512_FP32_ROUTES = Routes(1, 4, 16, 128)
# cpu-convolution-avx2-fp32.md (emulated): fp32 with AVX2. The weight gradient as a matrix product
# wins for outputs of up to 3x3 pixels with 128 or more channels (26.7 against 29.1 ms for 256 ->
# 256 at 3x3; the tutorial net 704 against 656 images/s, medians of three alternations). ResNet-18's
# 8x8 -> 4x4 convolution measured faster alone that way (78.5 against 90.0 ms) but the network did
# not (49.2 against 51.3 images/s, medians of four), so it stays with oneDNN, as 4x4 outputs do.
AVX2_FP32_ROUTES = Routes(1, 9, 9, 128)


@dataclass(frozen=True)
class CpuSettings:
    """The settings `auto` stands for on one class of CPU, and the measurement they come from."""

    precision: Literal["bf16", "fp32"]
    compiled: frozenset[str]  # architectures (pipeline.architectures) compiled on this class
    routes: Routes
    source: str  # the benchmark result behind the choice

    def compile(self, arch: str) -> bool:
        """Whether `auto` compiles `arch` here: only where measured faster (a new network: eager)."""
        return arch in self.compiled


SETTINGS: dict[IsaClass, CpuSettings] = {
    # AMX (results/cpu-throughput.md): bf16 2.88x and bf16 + compile 3.57x the plain loop for
    # ResNet-18; the tutorial net 2.37x in bf16 eager, 2.18x compiled.
    "amx": CpuSettings("bf16", frozenset({"resnet18"}), AMX_ROUTES, "results/cpu-throughput.md"),
    # results/cpu-avx512-bf16-routes.md: bf16 2.41x the plain loop for ResNet-18, eager and compiled
    # alike (fp32 1.25x; results/cpu-avx512-bf16.md, with earlier routes: compiled 2% faster); the
    # tutorial net 2.24x in bf16 eager, 2.18x compiled. Compiled ResNet-18 depends on the width here
    # (results/cpu-compile-stage.md, the train stage): at width 64 eager epochs 6% shorter, at width
    # 32 (the CPU recipe) a tie on 5,000 images and compiled 3-5% faster on 50,000, so it compiles.
    "avx512-bf16": CpuSettings(
        "bf16", frozenset({"resnet18"}), AVX512_BF16_ROUTES, "results/cpu-avx512-bf16-routes.md"
    ),
    # results/cpu-avx512-routes.md (emulated): ResNet-18 fp32 eager 1.29x the plain loop, compiled
    # 1.28x (eager faster in both rounds, and compiling peaked at 3.3 GB); the tutorial net
    # compiled 1.43x, eager 1.39x, and in the train stage 3% faster an epoch compiled for 5 s
    # more on the first (cpu-compile-stage.md).
    "avx512": CpuSettings(
        "fp32", frozenset({"tutorial"}), AVX512_FP32_ROUTES, "results/cpu-avx512-routes.md"
    ),
    # results/cpu-avx2-routes.md (emulated): compiling does not pay on this class. ResNet-18:
    # 1.21x the plain loop eager, 1.16x compiled (results/cpu-avx2.md, before the routes: a tie),
    # and slower compiled in the earlier CPU recipe (second epoch 308 s against 287 s eager,
    # results/cpu-recipe-per-class.md) after 40 s of compiling; the tutorial net a tie (2.31x
    # eager, 2.33x compiled; eager won every round of results/cpu-avx2.md). (An earlier "NaN when
    # compiled for AVX2" was Inductor's cache mixing vector ISAs: see
    # compile_cache.use_inductor_cache_of_this_vector_isa.)
    "avx2": CpuSettings("fp32", frozenset(), AVX2_FP32_ROUTES, "results/cpu-avx2-routes.md"),
    # not measured (Arm, older x86): the safe choice, plain PyTorch in fp32
    "other": CpuSettings("fp32", frozenset(), ONEDNN_ONLY, "the safe choice for an unmeasured class"),
}


def settings_for(isa: IsaClass) -> CpuSettings:
    return SETTINGS[isa]
