"""`cifar10 sweep`: the grid, its names and its refusals; and (`-m long`) sweeps on a real Ray
cluster of two nodes started here, each declaring two GPUs it does not have while the trainings run
on the CPU, with a bare git repository and a local folder as the shared remotes."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stages.cli import app
from stages.cluster import grid
from tests.conftest import make_tiny_archive, set_params
from tests.test_dvc import BIN, dvc, make_repository, shell

runner = CliRunner()


def test_the_grid_is_dvcs_and_its_names_are_stable() -> None:
    points = grid(["train.seed=0,1", "train.lr=0.1,0.2"], "lr-seed")
    assert [point.name for point in points] == ["lr-seed-1", "lr-seed-2", "lr-seed-3", "lr-seed-4"]
    assert [point.overrides for point in points] == [
        ["train.seed=0", "train.lr=0.1"],
        ["train.seed=0", "train.lr=0.2"],
        ["train.seed=1", "train.lr=0.1"],
        ["train.seed=1", "train.lr=0.2"],
    ]
    unnamed = [point.name for point in grid(["train.seed=0,1"], None)]
    assert unnamed == [point.name for point in grid(["train.seed=0,1"], None)]  # started again: the same
    assert unnamed != [point.name for point in grid(["train.seed=0,2"], None)]


def test_without_ray_it_gives_the_same_sweep_on_dvcs_queue(project: Path) -> None:
    result = runner.invoke(app, ["sweep", "-S", "train.seed=0,1,2", "-n", "seeds"])
    assert result.exit_code == 0, result.output
    assert "dvc exp run --queue -S train.seed=0,1,2 -n seeds && dvc queue start" in result.stdout
    bad = runner.invoke(app, ["sweep", "-S", "train.seed=0,x"])
    assert (
        bad.exit_code == 2
        and bad.stderr.strip() == "error: train.seed: input should be a valid integer, not 'x'"
    )


def test_without_ray_installed_the_sweep_says_how_to_install_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = runner.invoke(app, ["sweep", "-S", "train.seed=0,1", "--ray", "auto"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: Ray is not installed: pip install -e '.[ray]'"


def test_a_commit_the_remote_does_not_have_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repositories(tmp_path)
    (repo / "README").write_text("not pushed\n")
    shell(repo, "git", "add", "README")
    shell(repo, "git", "commit", "-qm", "not pushed")
    monkeypatch.chdir(repo)
    result = runner.invoke(app, ["sweep", "-S", "train.seed=0,1", "--ray", "auto"])
    assert result.exit_code == 1
    assert "is not on the git remote origin" in result.stderr and "`git push origin` first" in result.stderr


def repositories(tmp_path: Path, epochs: int = 3) -> Path:
    """The author's repository, its DVC remote a local folder, pushed to a bare git repository."""
    archive = make_tiny_archive(tmp_path / "mirror" / "cifar-10-binary.tar.gz")
    repo = make_repository(tmp_path / "author", archive.path.as_uri(), archive.sha256)
    set_params(repo / "params.yaml", [f"train.epochs={epochs}"])
    shell(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git"))
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "storage"))
    shell(repo, "git", "add", "-A")
    shell(repo, "git", "commit", "-qm", "the project")
    shell(repo, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    shell(repo, "git", "push", "-q", "-u", "origin", "main")
    return repo


# ----------------------------------------------------------------------------- on a Ray cluster


@pytest.fixture
def ray_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Two Ray nodes on this machine, each with two GPUs it does not have; stopped at the end.
    Each run of the preprocess stage on them (not a restore from DVC's run-cache) appends a line to
    tmp_path/preprocess-runs.

    On the machine's own address: with the nodes on 127.0.0.1, Ray's GCS took no connection
    from a driver started apart (`cifar10 sweep` waited in `ray.init`), so the loopback is out."""
    from ray.cluster_utils import Cluster

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('DVC_STAGE') == 'preprocess':\n"
        f"    open({str(tmp_path / 'preprocess-runs')!r}, 'a').write('ran\\n')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook))  # the nodes' processes inherit it
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def sweep_process(repo: Path, address: str, *arguments: str) -> subprocess.Popen[str]:
    """`cifar10 sweep ... --ray ADDRESS` in `repo`, its lines readable as they come."""
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    environment.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [str(BIN / "cifar10"), "sweep", *arguments, "--ray", address],
        cwd=repo,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def experiments_of(folder: Path) -> dict[str, dict[str, Any]]:
    table = json.loads(dvc(folder, "exp", "show", "--json"))
    return {
        experiment["name"]: experiment["revs"][0]["data"]
        for row in table
        for experiment in row.get("experiments") or []
    }


@pytest.mark.long
def test_a_sweep_on_two_nodes_runs_four_trainings_at_once_and_one_table_shows_them(
    ray_cluster: Any, tmp_path: Path
) -> None:
    repo = repositories(tmp_path)
    counter = tmp_path / "preprocess-runs"
    process = sweep_process(repo, ray_cluster.address, "-S", "train.seed=0,1,2,3", "-n", "seeds")
    assert process.stdout is not None
    lines = [line.rstrip("\n") for line in process.stdout]
    assert process.wait() == 0, "\n".join(lines)
    running = [line for line in lines if ": running on node" in line and line.endswith("epoch 0")]
    first_done = next(index for index, line in enumerate(lines) if ": done on node" in line)
    places = {line.split("running on ")[1].rsplit(", epoch", 1)[0] for line in running}
    assert len(running) == 4 and len(places) == 4, "\n".join(lines)  # four (node, GPU) pairs
    assert all(lines.index(line) < first_done for line in running), "\n".join(lines)  # all at once
    assert "total: 4 done, 0 failed, of 4" in lines
    assert counter.read_text().splitlines() == ["ran"]  # the data stages once, not once per task
    assert {f"seeds-{index}" for index in range(1, 5)} <= experiments_of(repo).keys()

    # a third clone sees the four in one table, with their figures
    shell(tmp_path, "git", "clone", "-q", str(tmp_path / "origin.git"), "third")
    third = tmp_path / "third"
    dvc(third, "exp", "pull", "origin", "-A")
    found = experiments_of(third)
    seeds = {
        found[f"seeds-{index}"]["params"]["params.yaml"]["data"]["train"]["seed"] for index in range(1, 5)
    }
    assert seeds == {0, 1, 2, 3}
    assert all(
        "accuracy" in found[f"seeds-{index}"]["metrics"]["metrics/eval.json"]["data"] for index in range(1, 5)
    )

    # started again: nothing runs
    again = sweep_process(repo, ray_cluster.address, "-S", "train.seed=0,1,2,3", "-n", "seeds")
    output, _ = again.communicate(timeout=300)
    assert (
        again.returncode == 0 and "all 4 experiments are on origin" in output and "running on" not in output
    )


@pytest.mark.long
def test_a_failing_point_is_reported_and_the_others_finish(ray_cluster: Any, tmp_path: Path) -> None:
    repo = repositories(tmp_path)
    process = sweep_process(
        repo, ray_cluster.address, "-S", "train.lr=0.1,1e30", "-S", "train.momentum=0.99", "-n", "lr"
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1, output
    assert "lr-1: done on node" in output
    failed = next(line for line in output.splitlines() if line.startswith("lr-2: failed on node"))
    assert "loss became NaN or infinite" in failed
    assert output.splitlines()[-1] == "error: 1 of 2 experiment(s) failed: lr-2"
    assert "lr-1" in experiments_of(repo) and "lr-2" not in experiments_of(repo)


@pytest.mark.long
def test_a_node_removed_mid_training_leaves_its_experiment_completed_once(
    ray_cluster: Any, tmp_path: Path
) -> None:
    repo = repositories(tmp_path, epochs=40)
    worker = next(node for node in ray_cluster.worker_nodes)
    process = sweep_process(repo, ray_cluster.address, "-S", "train.seed=0,1,2,3", "-n", "moved")
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if f"running on node {worker.node_id[:8]}" in line and not line.endswith("epoch 0"):
            ray_cluster.remove_node(worker)  # mid-training: Ray retries its tasks on the head node
            break
    lines += [line.rstrip("\n") for line in process.stdout]
    assert process.wait() == 0, "\n".join(lines)
    assert "total: 4 done, 0 failed, of 4" in lines, "\n".join(lines)
    shell(repo, "git", "fetch", "-q", "origin", "refs/exps/*:refs/exps/*")
    names = [
        line.split("/")[-1]
        for line in shell(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps/").split()
    ]
    assert sorted(name for name in names if name.startswith("moved-")) == [
        f"moved-{index}" for index in range(1, 5)
    ]


@pytest.mark.long
def test_ctrl_c_cancels_the_tasks_and_says_which_finished(ray_cluster: Any, tmp_path: Path) -> None:
    import psutil

    repo = repositories(tmp_path)
    process = sweep_process(repo, ray_cluster.address, "-S", "train.epochs=2,400", "-n", "stopped")
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if lines[-1].startswith("stopped-1: done on node"):
            process.send_signal(signal.SIGINT)  # Ctrl-C, while stopped-2 trains
            break
    lines += [line.rstrip("\n") for line in process.stdout]
    assert process.wait() != 0
    assert "stopped: cancelled 1 task(s); finished: stopped-1" in lines, "\n".join(lines)
    # the cancelled task stopped its commands and removed its clone
    clones = list(Path(tempfile.gettempdir()).glob("cifar10-stopped-2-*"))
    assert clones == [], clones
    commands = [" ".join(found.info["cmdline"] or []) for found in psutil.process_iter(["cmdline"])]
    assert not [command for command in commands if "stopped-2" in command]
