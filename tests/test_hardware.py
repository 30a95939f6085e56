"""`auto` on the CPU: the instruction-set class, and the settings measured fastest for it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.compile_cache import should_compile
from pipeline.convolution import SmallMapConv2d
from pipeline.device import describe_cpu_choice, place_model, resolve_precision
from pipeline.hardware import AMX_ROUTES, SETTINGS, cpu_class, native_class, settings_for
from pipeline.model import build_model
from tests.conftest import REPO, train_params

CPU = torch.device("cpu")
AMX = frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"})
AVX512 = frozenset({"avx2", "avx512f", "avx512bw"})
AVX2 = frozenset({"avx2", "fma"})


def test_the_class_follows_the_flags() -> None:
    assert [native_class(flags) for flags in (AMX, AVX512_BF16, AVX512, AVX2, frozenset())] == [
        "amx",
        "avx512-bf16",
        "avx512",
        "avx2",
        "other",
    ]


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "amx"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "avx512-bf16"),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "avx512"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx2"),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
        ({"ATEN_CPU_CAPABILITY": "avx512"}, "amx"),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "amx"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "default"}, "other"),
    ],
)
def test_limits_on_onednn_and_aten_lower_the_class(environment: dict[str, str], expected: str) -> None:
    assert cpu_class(AMX, environment) == expected


def test_a_limit_never_raises_the_class() -> None:
    assert cpu_class(AVX2, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "avx2"


def test_auto_precision_is_bf16_only_where_it_measured_faster() -> None:
    choices = {isa: resolve_precision("auto", CPU, isa) for isa in SETTINGS}
    assert choices == {isa: settings.precision for isa, settings in SETTINGS.items()}
    assert choices["amx"] == choices["avx512-bf16"] == "bf16"  # never emulated bf16:
    assert {choices[isa] for isa in ("avx512", "avx2", "other")} == {"fp32"}
    assert resolve_precision("fp32", CPU, "amx") == "fp32"  # an explicit value wins


def test_explicit_bf16_without_bf16_instructions_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.device"):
        assert resolve_precision("bf16", CPU, "avx2") == "bf16"
        assert resolve_precision("bf16", CPU, "amx") == "bf16"
    assert len(caplog.records) == 1 and "without bf16 instructions (avx2 class)" in caplog.messages[0]


def test_auto_compile_follows_the_class_the_arch_and_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.compile_cache.shutil.which", lambda name: f"/usr/bin/{name}")
    for isa, settings in SETTINGS.items():
        for arch in ("resnet18", "tutorial"):
            assert should_compile("auto", CPU, arch, isa) == settings.compile(arch), (isa, arch)
    assert should_compile(True, CPU, "tutorial", "other")  # explicit values win
    assert not should_compile(False, torch.device("cuda"), "resnet18", "amx")
    monkeypatch.setattr("pipeline.compile_cache.shutil.which", lambda name: None)
    assert not any(should_compile("auto", CPU, "resnet18", isa) for isa in SETTINGS)


def test_unknown_cpus_get_the_safe_choice() -> None:
    other = settings_for("other")
    assert other.precision == "fp32" and not other.compile("resnet18") and not other.compile("tutorial")
    plain = place_model(build_model("resnet18", 4), CPU, "other")
    assert not any(isinstance(module, SmallMapConv2d) for module in plain.modules())
    routed = [module for module in place_model(build_model("resnet18", 4), CPU, "amx").modules()]
    assert {module.routes for module in routed if isinstance(module, SmallMapConv2d)} == {AMX_ROUTES}


def test_every_class_names_the_measurement_behind_it() -> None:
    for isa, settings in SETTINGS.items():
        if isa != "other":
            path = REPO / "benchmarks" / settings.source.split(" ")[0]
            assert path.exists(), (isa, settings.source)


def test_cpu_compilation_keeps_inductors_cache_per_vector_isa(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Inductor's graph cache does not key CPU graphs by vector ISA: a graph generated for AVX2 and
    loaded under AVX-512 corrupted the heap. Each ISA gets its own folder under the chosen one."""
    from pipeline.compile_cache import INDUCTOR_CACHE_VARIABLE, compile_model

    monkeypatch.setenv(INDUCTOR_CACHE_VARIABLE, str(tmp_path / "mine"))

    def folder_under(capability: str) -> subprocess.Popen[str]:
        code = (
            "from pipeline.compile_cache import use_inductor_cache_of_this_vector_isa as f; print(f().name)"
        )
        return subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, "ATEN_CPU_CAPABILITY": capability},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # started first, to run beside this process's own probe of the ISA (each compiles test programs)
    other_processes = [folder_under("avx2"), folder_under("default")]

    monkeypatch.setattr(torch, "compile", lambda module: module)
    model = build_model("tutorial", 4)
    assert compile_model(model, torch.device("cuda")) is model
    assert os.environ[INDUCTOR_CACHE_VARIABLE] == str(tmp_path / "mine")  # CUDA: left alone
    assert compile_model(model, CPU) is model
    folder = Path(os.environ[INDUCTOR_CACHE_VARIABLE])
    assert folder.parent == tmp_path / "mine" and folder.name.startswith("vector-isa-")
    compile_model(model, CPU)
    assert Path(os.environ[INDUCTOR_CACHE_VARIABLE]) == folder  # not nested on a second call

    folders = set()
    for process in other_processes:
        output, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors
        folders.add(output.strip())
    assert folders == {"vector-isa-avx2", "vector-isa-invalid_vec_isa"}


def test_cpu_compilation_first_removes_binaries_an_interrupted_compilation_left_incomplete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Inductor reuses any cached binary whose file exists: one cut short by a killed run made the
    next compiled run die (a bus error for a truncated .so, `file too short` for an empty one)."""
    from filelock import FileLock

    from pipeline.compile_cache import INDUCTOR_CACHE_VARIABLE, compile_model, is_complete_elf

    base = tmp_path / "cache"
    monkeypatch.setenv(INDUCTOR_CACHE_VARIABLE, str(base / "vector-isa-chosen-earlier"))
    elf = Path(torch._C.__file__).read_bytes()  # a real shared object
    assert len(elf) > 1000

    def cached(relative: str, content: bytes) -> Path:
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    complete = cached("ab/cab.so", elf)  # an ISA probe's binary, outside the per-ISA folders
    complete_object = cached("vector-isa-avx2/cd/ccd.main.o", elf)
    source = cached("vector-isa-avx2/cd/ccd.main.cpp", b"")
    truncated = cached("vector-isa-avx2/ef/cef.main.so", elf[: len(elf) // 2])
    empty = cached("vector-isa-avx2/gh/cgh.optimized.o", b"")
    not_elf = cached("ij/cij.so", b"#!/bin/sh\n" * 10)
    being_built = cached("vector-isa-avx2/kl/ckl.main.so", elf[:100])
    assert is_complete_elf(complete) and not is_complete_elf(truncated)

    monkeypatch.setattr(torch, "compile", lambda module: module)
    model = build_model("tutorial", 4)
    with FileLock(base / "vector-isa-avx2" / "locks" / "ckl.lock"), caplog.at_level(logging.WARNING):
        assert compile_model(model, CPU) is model

    assert [path.exists() for path in (complete, complete_object, source, being_built)] == [True] * 4
    assert [path.exists() for path in (truncated, empty, not_elf)] == [False] * 3
    assert [record.getMessage() for record in caplog.records if record.name == "pipeline.compile_cache"] == [
        f"removed 3 incomplete compiled file(s) from Inductor's cache {base}, left by an "
        "interrupted compilation; they are compiled again"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        compile_model(model, CPU)  # its lock free: the incomplete file is removed now
    lines = [record.getMessage() for record in caplog.records if record.name == "pipeline.compile_cache"]
    assert not being_built.exists() and len(lines) == 1 and lines[0].startswith("removed 1 ")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        compile_model(model, CPU)  # nothing left to remove: no line
    assert not [record for record in caplog.records if record.name == "pipeline.compile_cache"]
    assert complete.exists() and complete_object.exists()


def test_the_train_stage_says_what_it_chose_and_why() -> None:
    params = train_params("train.precision=fp32")
    line = describe_cpu_choice(params, "fp32", True, "avx512")
    assert line == (
        "CPU class avx512: fp32, compiled (auto), convolution routes of the class; auto follows the "
        "measurements in benchmarks/results/cpu-avx512-routes.md"
    )
    unknown = describe_cpu_choice(train_params(), "fp32", False, "other")
    assert "fp32 (auto), eager (auto)" in unknown and "the safe choice for an unmeasured class" in unknown
