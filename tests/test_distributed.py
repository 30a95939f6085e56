"""Data-parallel training through torch.distributed (gloo on CPU), launched by `cifar10 train` itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pipeline.cores as cores
import pipeline.training as training
from pipeline.checkpoint import load_checkpoint
from pipeline.data import load_meta, load_split, preprocess
from pipeline.device import DeviceSplit, InputTransform
from pipeline.inference import evaluate
from pipeline.params import PreprocessParams, load_params
from pipeline.weights import load_model
from tests.conftest import FAST_TRAINING, REPO, make_tiny_archive, set_params
from tests.small_network import small_network

# fp32, so that two processes and one agree up to floating-point summation order
SETTINGS = [
    *FAST_TRAINING,
    "train.precision=fp32",
    "train.epochs=4",
    "train.checkpoint_every=1",
]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


# The one-process and data-parallel runs compared without BatchNorm: a quarter of params.yaml's
# peak lr, no checkpoints
STABLE = ["train.lr=0.05", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ with the tests' archive prepared, shared by every project folder of this module."""
    folder = tmp_path_factory.mktemp("shared")
    archive = make_tiny_archive(folder / "cifar-10-binary.tar.gz")
    preprocess(archive.path, PreprocessParams(val_size=20, seed=0), folder / "data" / "prepared")
    return folder / "data"


def project_folder(folder: Path, data: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "data").symlink_to(data)
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(folder / "params.yaml", ["preprocess.val_size=20"])  # what the shared data was made with
    return folder


@pytest.fixture
def project(tmp_path: Path, prepared_data: Path) -> Path:
    return project_folder(tmp_path / "project", prepared_data)


def environment(project: Path, hook: str) -> dict[str, str]:
    """`hook` becomes a sitecustomize module, so it runs in every worker process too."""
    paths = [str(REPO)]
    if hook:
        folder = project / "hook"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(hook)
        paths.insert(0, str(folder))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "GLOO_SOCKET_IFNAME": "lo"}


def stage_arguments(*extra: str) -> list[str]:
    return ["-m", "stages", "train", *(f"--set={item}" for item in (*SETTINGS, *extra))]


def train(
    project: Path, *extra: str, hook: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m stages train` in `project`."""
    return subprocess.run(
        [sys.executable, *stage_arguments(*extra)],
        cwd=project,
        env=environment(project, hook) | (env or {}),
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
            from pipeline.step import LearningRate
            original, calls = LearningRate.set, [0]
            def dying(self, step):
                calls[0] += 1
                if calls[0] == {step}:
                    os.kill(os.getpid(), signal.SIGKILL)
                original(self, step)
            LearningRate.set = dying
    """)


# the exact comparisons swap in a network without BatchNorm, in every worker process
WITHOUT_BATCHNORM = textwrap.dedent("""
    import pipeline.training as training
    from tests.small_network import small_network
    training.build_model = small_network
""")


def train_here(data: Path, folder: Path, *extra: str, batchnorm: bool = True) -> dict[str, torch.Tensor]:
    """The weights one plain process trains with these settings: this one (a process of its own
    would add seconds of imports), registered among trainings in a folder of its own."""
    params = load_params(REPO / "params.yaml", [*SETTINGS, *extra])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cores, "registry_folder", lambda: folder / "registry")
        if not batchnorm:
            patch.setattr(training, "build_model", small_network)
        outcome = training.train(params.model, params.train, data / "prepared", folder / "checkpoints")
    assert outcome is not None
    return outcome.state


@pytest.fixture(scope="module")
def one_process_weights(
    tmp_path_factory: pytest.TempPathFactory, prepared_data: Path
) -> dict[str, torch.Tensor]:
    """What one process trains without BatchNorm (STABLE): the data-parallel runs must match it."""
    return train_here(prepared_data, tmp_path_factory.mktemp("single"), *STABLE, batchnorm=False)


@pytest.fixture(scope="module")
def two_process_run(
    tmp_path_factory: pytest.TempPathFactory, prepared_data: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Two processes with the real network (BatchNorm) and a weight average, a checkpoint every
    epoch: its project folder and the finished process, read by the tests below."""
    folder = project_folder(tmp_path_factory.mktemp("two") / "project", prepared_data)
    result = train(folder, "train.nproc=2", "train.epochs=2", "train.ema=0.5")
    assert result.returncode == 0, result.stderr
    return folder, result


def test_two_processes_match_one_with_the_same_global_batch(
    project: Path, one_process_weights: dict[str, torch.Tensor]
) -> None:
    result = train(project, *STABLE, "train.nproc=2", hook=WITHOUT_BATCHNORM)
    assert result.returncode == 0, result.stderr
    two = weights(project)
    assert one_process_weights.keys() == two.keys()
    for name in one_process_weights:
        assert torch.allclose(one_process_weights[name], two[name], **TOLERANCE), name


def test_two_processes_write_one_set_of_outputs(
    two_process_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    project, result = two_process_run
    assert "starting 2 worker processes" in result.stderr
    assert json.loads((project / "reports" / "train.json").read_text())["processes"] == 2
    assert sorted(path.name for path in (project / "models").iterdir()) == ["model.safetensors"]
    assert list((project / "checkpoints").iterdir()) == []  # one was written each epoch
    # eval.json: `{}`, no test figures until evaluate has scored this model
    assert sorted(path.name for path in (project / "metrics").iterdir()) == [
        "eval.json",
        "train.json",
        "train_log.tsv",
    ]
    assert json.loads((project / "metrics" / "eval.json").read_text()) == {}
    assert sorted(path.name for path in (project / "reports").iterdir()) == ["train.json"]
    assert result.stderr.count("epoch 2 ") == 1  # only rank 0 logs


def test_a_dying_worker_fails_the_run_cleanly(project: Path) -> None:
    result = train(project, "train.nproc=2", "train.checkpoint_every=0", hook=kill_rank_1_at_step(3))
    assert result.returncode == 1
    assert "worker rank 1 stopped with signal SIGKILL; no outputs were written" in result.stderr
    assert not (project / "models" / "model.safetensors").exists()
    assert not (project / "metrics").exists()


def test_two_process_checkpoint_resumes_in_one_process(
    project: Path, one_process_weights: dict[str, torch.Tensor]
) -> None:
    hook = WITHOUT_BATCHNORM + kill_rank_1_at_step(10)  # dies in epoch 3 (4 steps an epoch)
    failed = train(project, "train.lr=0.05", "train.nproc=2", hook=hook)
    assert failed.returncode == 1
    (saved,) = (project / "checkpoints").glob("*.safetensors")
    assert load_checkpoint(saved).processes == 2
    resumed = train(project, "train.lr=0.05", "train.nproc=1", hook=WITHOUT_BATCHNORM)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoints/{saved.name} at epoch 3, step 0" in resumed.stderr
    # a worker's thread count is its share beside the other: one process takes its own share
    assert "thread(s) the run was checkpointed with" not in resumed.stderr
    resumed_weights = weights(project)
    for name in one_process_weights:
        assert torch.allclose(one_process_weights[name], resumed_weights[name], **TOLERANCE), name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_nodes_launched_by_torchrun_match_one_process(
    project: Path, one_process_weights: dict[str, torch.Tensor]
) -> None:
    """Two `torchrun` launches, one process each, meet through c10d rendezvous on 127.0.0.1 as two
    nodes (sharing the project folder, as nodes share a file system) and train one model."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    launcher += [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        "nodes",
    ]
    nodes = [
        subprocess.Popen(
            [
                *launcher,
                "--rdzv-conf",
                f"is_host={is_host}",
                "--local-addr",
                "127.0.0.1",
                *stage_arguments(*STABLE),
            ],
            cwd=project,
            env=environment(project, WITHOUT_BATCHNORM),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for is_host in (1, 0)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert json.loads((project / "reports" / "train.json").read_text())["processes"] == 2
    two = weights(project)
    for name in one_process_weights:
        assert torch.allclose(one_process_weights[name], two[name], **TOLERANCE), name


@pytest.mark.usefixtures("all_cores")  # on one core the two differ in their last bits
def test_one_process_under_torchrun_matches_the_plain_run_with_batchnorm(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torchrun --nproc-per-node 1` trains through DistributedDataParallel (gloo) with the real
    network, BatchNorm included: with one process it must give the plain run's weights."""
    # both runs at the thread count of the machine, whatever share this test worker has
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores.available_cores()))
    with training.fixed_threads(cores.available_cores()):
        one = train_here((project / "data").resolve(), project.parent / "plain", "train.checkpoint_every=0")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    under_torchrun = subprocess.run(
        [*launcher, *stage_arguments("train.checkpoint_every=0")],
        cwd=project,
        # the plain run's thread count, whatever else trains on the machine: the same last bits
        env=environment(project, "") | {"OMP_NUM_THREADS": str(cores.available_cores())},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert under_torchrun.returncode == 0, under_torchrun.stderr
    assert json.loads((project / "reports" / "train.json").read_text())["processes"] == 1
    ddp = weights(project)
    assert any("running_mean" in name for name in one)
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-6, atol=1e-7, msg=name)


def test_two_processes_with_compile(project: Path, one_process_weights: dict[str, torch.Tensor]) -> None:
    # a CUDA toolkit without a GPU makes torch log "No CUDA runtime is found" as Inductor starts
    toolkit = {"CUDA_HOME": str(project)}
    result = train(
        project, *STABLE, "train.nproc=2", "train.compile=true", hook=WITHOUT_BATCHNORM, env=toolkit
    )
    assert result.returncode == 0, result.stderr
    assert "No CUDA runtime" not in result.stderr  # not a problem on a CPU run: not shown
    one, compiled = one_process_weights, weights(project)
    for name in one:  # other kernels, other rounding: close, not equal
        assert torch.allclose(one[name], compiled[name], rtol=1e-3, atol=1e-4), name


def test_logged_validation_is_that_of_the_saved_model(
    two_process_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Each process keeps its own BatchNorm statistics and weight average; the validation figures
    in the log must still be those of the weights that are saved."""
    project, _ = two_process_run
    logged = json.loads((project / "metrics" / "train.json").read_text())
    logged |= json.loads((project / "reports" / "train.json").read_text())  # val_loss is a detail
    prepared = project / "data" / "prepared"
    model, card = load_model(project / "models" / "model.safetensors", torch.device("cpu"))
    val = load_split(prepared, "val", load_meta(prepared))
    assert val is not None
    again = evaluate(
        model,
        DeviceSplit.from_split(val, torch.device("cpu")),
        InputTransform.create(card.mean, card.std, card.normalize, torch.device("cpu")),
        batch_size=500,
        precision="fp32",
    )
    assert logged["val_accuracy"] == again.accuracy
    assert logged["val_loss"] == pytest.approx(again.loss, rel=1e-6)
