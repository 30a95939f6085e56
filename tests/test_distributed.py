"""Data-parallel training through torch.distributed (gloo on CPU), launched by `cifar10 train` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.data import preprocess
from pipeline.params import PreprocessParams
from tests.conftest import FAST_TRAINING, REPO, TinyArchive

# fp32, so that two processes and one agree up to floating-point summation order
SETTINGS = [
    *FAST_TRAINING,
    "train.precision=fp32",
    "train.epochs=4",
    "train.checkpoint_every=1",
]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture
def project(tmp_path: Path, tiny_archive: TinyArchive) -> Path:
    folder = tmp_path / "project"
    preprocess(tiny_archive.path, PreprocessParams(val_size=20, seed=0), folder / "data" / "prepared")
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return folder


def train(project: Path, *extra: str, hook: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m stages train`; `hook` becomes a sitecustomize module, so it runs in every worker too."""
    paths = [str(REPO)]
    if hook:
        folder = project / "hook"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(hook)
        paths.insert(0, str(folder))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    arguments = [f"--set={item}" for item in (*SETTINGS, *extra)]
    return subprocess.run(
        [sys.executable, "-m", "stages", "train", *arguments],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def weights(project: Path) -> dict[str, torch.Tensor]:
    return load_file(str(project / "models" / "model.safetensors"))


def kill_rank_1_at_step(step: int) -> str:
    return textwrap.dedent(f"""
        import os, signal
        if os.environ.get("RANK") == "1":
            import pipeline.engine as engine
            original, calls = engine.set_learning_rate, [0]
            def dying(optimizer, value):
                calls[0] += 1
                if calls[0] == {step}:
                    os.kill(os.getpid(), signal.SIGKILL)
                original(optimizer, value)
            engine.set_learning_rate = dying
    """)


# BatchNorm normalises with each process's own half batch (PyTorch's SyncBatchNorm, which would make
# them global, runs on CUDA only), so the exact comparison swaps in a network without BatchNorm.
WITHOUT_BATCHNORM = textwrap.dedent("""
    import torch.nn as nn
    import pipeline.training as training
    def small_network(arch, width, classes):
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        return nn.Sequential(*layers, nn.Linear(32, classes))
    training.build_model = small_network
""")


def sibling(project: Path, name: str) -> Path:
    """Another project folder sharing `project`'s prepared data."""
    folder = project.parent / name
    folder.mkdir()
    (folder / "data").symlink_to(project / "data")
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return folder


def test_two_processes_match_one_with_the_same_global_batch(project: Path) -> None:
    single = sibling(project, "single")
    stable = ["train.lr=0.05", "train.checkpoint_every=0"]
    result = train(single, *stable, hook=WITHOUT_BATCHNORM)
    assert result.returncode == 0, result.stderr
    result = train(project, *stable, "train.nproc=2", hook=WITHOUT_BATCHNORM)
    assert result.returncode == 0, result.stderr
    one, two = weights(single), weights(project)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], **TOLERANCE), name


def test_two_processes_write_one_set_of_outputs(project: Path) -> None:
    result = train(project, "train.nproc=2")
    assert result.returncode == 0, result.stderr
    assert "starting 2 worker processes" in result.stderr
    assert json.loads((project / "metrics" / "train.json").read_text())["processes"] == 2
    assert sorted(path.name for path in (project / "models").iterdir()) == ["checkpoint", "model.safetensors"]
    assert list((project / "models" / "checkpoint").iterdir()) == []
    assert sorted(path.name for path in (project / "metrics").iterdir()) == ["train.json", "train_log.tsv"]
    assert result.stderr.count("epoch 4 ") == 1  # only rank 0 logs


def test_a_dying_worker_fails_the_run_cleanly(project: Path) -> None:
    result = train(project, "train.nproc=2", "train.checkpoint_every=0", hook=kill_rank_1_at_step(3))
    assert result.returncode == 1
    assert "worker rank 1 stopped with signal SIGKILL; no outputs were written" in result.stderr
    assert not (project / "models" / "model.safetensors").exists()
    assert not (project / "metrics").exists()


def test_two_process_checkpoint_resumes_in_one_process(project: Path, tmp_path: Path) -> None:
    hook = WITHOUT_BATCHNORM + kill_rank_1_at_step(10)  # dies in epoch 3 (4 steps an epoch)
    failed = train(project, "train.lr=0.05", "train.nproc=2", hook=hook)
    assert failed.returncode == 1
    assert (project / "models" / "checkpoint" / "checkpoint.safetensors").exists()
    resumed = train(project, "train.lr=0.05", "train.nproc=1", hook=WITHOUT_BATCHNORM)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from models/checkpoint/checkpoint.safetensors at epoch 3, step 0" in resumed.stderr
    straight = sibling(project, "straight")
    assert train(straight, "train.lr=0.05", hook=WITHOUT_BATCHNORM).returncode == 0
    one, resumed_weights = weights(straight), weights(project)
    for name in one:
        assert torch.allclose(one[name], resumed_weights[name], **TOLERANCE), name
