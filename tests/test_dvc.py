"""End to end through DVC in a temporary git repository, with the archive served from 127.0.0.1."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_TRAINING, REPO, Server, TinyArchive, set_params

pytestmark = pytest.mark.dvc
BIN = Path(sys.executable).parent


def shell(repo: Path, *command: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def repo(tmp_path: Path, http_server: Server, tiny_archive: TinyArchive) -> Path:
    http_server.state.body = tiny_archive.path.read_bytes()
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    for package in ("pipeline", "stages"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    set_params(
        repo / "params.yaml",
        [
            *FAST_TRAINING,
            "train.epochs=1",
            f"data.url={http_server.url}",
            f"data.sha256={tiny_archive.sha256}",
        ],
    )
    shell(repo, "git", "init", "-q", "-b", "main")
    shell(repo, "git", "config", "user.name", "test")
    shell(repo, "git", "config", "user.email", "test@example.com")
    shell(repo, str(BIN / "dvc"), "init", "-q")
    shell(repo, str(BIN / "dvc"), "config", "core.analytics", "false")
    return repo


def dvc(repo: Path, *arguments: str) -> str:
    return shell(repo, str(BIN / "dvc"), *arguments)


def test_repro_experiment_and_comparisons(repo: Path, http_server: Server) -> None:
    dvc(repo, "repro", "preprocess")
    assert (repo / "data/prepared/train.safetensors").exists()
    assert not (repo / "models").exists()

    dvc(repo, "repro")
    assert len(http_server.state.requests) == 1
    eval_before = json.loads((repo / "metrics/eval.json").read_text())
    assert json.loads((repo / "metrics/train.json").read_text())["epochs"] == 1
    assert json.loads(dvc(repo, "status", "--json")) == {}  # every stage up to date
    shell(repo, "git", "add", "-A")
    shell(repo, "git", "commit", "-qm", "baseline")

    dvc(repo, "exp", "run", "-S", "train.epochs=2")
    assert len(http_server.state.requests) == 1  # data stages were cached, nothing downloaded again
    assert json.loads((repo / "metrics/train.json").read_text())["epochs"] == 2

    metrics = json.loads(dvc(repo, "metrics", "diff", "--all", "--json"))
    evaluation = metrics["metrics/eval.json"]
    assert evaluation["accuracy"]["old"] == eval_before["accuracy"]
    assert evaluation["loss"]["old"] == eval_before["loss"] and evaluation["loss"]["diff"] != 0
    assert metrics["metrics/train.json"]["epochs"] == {"old": 1, "new": 2, "diff": 1}
    assert "accuracy" in dvc(repo, "metrics", "diff", "--all")

    params = json.loads(dvc(repo, "params", "diff", "--json"))
    assert params["params.yaml"]["train.epochs"] == {"old": 1, "new": 2, "diff": 1}

    dvc(repo, "plots", "show", "-o", "plots")
    page = (repo / "plots" / "index.html").read_text()
    assert "train_loss" in page and "predicted" in page


def project_imports(path: Path) -> set[str]:
    """Files of pipeline/ and stages/ that `path` imports, directly or through each other."""
    found: set[str] = set()
    pending = [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                candidate = REPO / (name.replace(".", "/") + ".py")
                relative = candidate.relative_to(REPO).as_posix()
                if (
                    name.split(".")[0] in ("pipeline", "stages")
                    and candidate.exists()
                    and relative not in found
                ):
                    found.add(relative)
                    pending.append(candidate)
    return found


@pytest.mark.parametrize("stage", ["download", "preprocess", "train", "evaluate"])
def test_each_stage_depends_on_exactly_the_code_it_imports(stage: str) -> None:
    definition = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    code = {dependency for dependency in definition["deps"] if dependency.endswith(".py")}
    assert code == {f"stages/{stage}.py"} | project_imports(REPO / "stages" / f"{stage}.py")
