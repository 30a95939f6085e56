"""A sweep on a Ray cluster: each grid point one Ray task, scheduled by Ray on the GPUs (or CPUs)
of whichever node has them free, retried by Ray on another node when its node dies.

A task works in a clone of the shared git remote at the sweep's commit, on its own node: it pulls
the run-cache, runs `dvc exp run --pull -n NAME -S ...` (so stages whose inputs the remote has seen
are restored, not run again) and pushes the experiment, its outputs and the run-cache back
(`DVC_EXP_AUTO_PUSH`, `dvc push --run-cache`). The data stages run once, in a first task, before the
grid. What each task is doing goes to a small Ray actor that the command that started the sweep
reads to draw one line per experiment. This module is the only one that imports Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

EPOCH_LINE = re.compile(r"\bepoch (\d+)\s")


@dataclass(frozen=True)
class Point:
    """One experiment of the grid: its name and its -S values."""

    name: str
    overrides: list[str]


def grid(options: Sequence[str], name: str | None) -> list[Point]:
    """The experiments of `-S` options in the grid syntax of `dvc exp run --queue -S` (`key=a,b`:
    one experiment per value, every combination), named as DVC names a queued sweep: NAME-1,
    NAME-2, ... in DVC's order. Without a name, `sweep-` and a digest of the options, so that the
    same grid started again has the same names (and resumes)."""
    from dvc.utils.hydra import get_hydra_sweeps

    sweeps = get_hydra_sweeps({"params.yaml": list(options)})
    prefix = name or "sweep-" + hashlib.sha256("\n".join(options).encode()).hexdigest()[:6]
    return [Point(f"{prefix}-{index + 1}", sweep["params.yaml"]) for index, sweep in enumerate(sweeps)]


def git(folder: Path, *arguments: str) -> str:
    result = subprocess.run(["git", *arguments], cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"git {' '.join(arguments)}: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()


def on_the_remote(folder: Path, remote: str) -> tuple[str, str]:
    """(the remote's URL, HEAD's commit), refusing a commit the remote does not have: every task
    clones the remote at that commit."""
    url = git(folder, "remote", "get-url", remote)
    commit = git(folder, "rev-parse", "HEAD")
    git(folder, "fetch", "-q", remote)
    if not git(folder, "branch", "-r", "--contains", commit):
        raise PipelineError(
            f"HEAD ({commit[:7]}) is not on the git remote {remote} ({url}), which every node clones: "
            f"`git push {remote}` first"
        )
    return url, commit


def finished_on_the_remote(folder: Path, remote: str) -> set[str]:
    """Names of the experiments the remote holds (refs/exps/<2>/<38>/<name>)."""
    listing = git(folder, "ls-remote", remote, "refs/exps/*")
    return {line.split("/")[-1] for line in listing.splitlines() if line.count("/") == 4}


# ----------------------------------------------------------------------------- on a node


def run_logged(
    command: list[str], folder: Path, environment: dict[str, str], on_line: Any = None
) -> tuple[int, list[str]]:
    """Run a command; its lines (stdout and stderr) as it prints them, to `on_line` too."""
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # stopped as a group if the task is cancelled
        preexec_fn=die_with_parent,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(lines[-1])
        return process.wait(), lines
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def die_with_parent() -> None:
    """In the child, before it runs: on Linux, be killed when the task's process dies (its node
    removed, say), so that a retry elsewhere is the only run of its experiment that pushes."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        set_parent_death_signal = 1  # PR_SET_PDEATHSIG, from <linux/prctl.h>
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(set_parent_death_signal, signal.SIGKILL)


def error_line(lines: Sequence[str]) -> str:
    """The line that says what went wrong: a stage's last `error:` line (the cause), else DVC's
    last `ERROR:` line, else the last line."""
    for prefix in ("error:", "ERROR:"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def clone(url: str, commit: str, label: str) -> Iterator[Path]:
    """A clone of the remote at `commit` in a temporary folder of this node, removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix=f"cifar10-{label}-"))
    try:
        git(folder, "clone", "-q", url, ".")
        git(folder, "checkout", "-q", commit)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def task_environment() -> dict[str, str]:
    """The stage commands' environment: DVC pushes each experiment when it ends; `python` and
    `dvc` are this Python environment's (dvc.yaml's commands say `python`), whatever the node's
    PATH."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "DVC_EXP_AUTO_PUSH": "true",
        "DVC_EXP_GIT_REMOTE": "origin",
        "DVC_NO_ANALYTICS": "1",
    }


def dvc_command() -> str:
    """The dvc of this Python environment (a node may not have it on PATH)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def prepare_data(url: str, commit: str) -> None:
    """Once per sweep: the data stages, pushed with the run-cache, for every task to restore."""
    dvc, environment = dvc_command(), task_environment()
    with clone(url, commit, "prepare") as folder:
        run_logged([dvc, "pull", "--run-cache"], folder, environment)  # what the remote already has
        code, lines = run_logged([dvc, "repro", "--pull", "preprocess"], folder, environment)
        if code != 0:
            raise PipelineError(f"the data stages failed: {error_line(lines)}")
        code, lines = run_logged([dvc, "push", "--run-cache"], folder, environment)
        if code != 0:
            raise PipelineError(f"pushing the prepared data failed: {error_line(lines)}")


def run_point(url: str, commit: str, point: Point, board: Any) -> dict[str, Any]:
    """One experiment, on the node Ray chose: its figures, or its error line."""
    import ray

    context = ray.get_runtime_context()
    where = {"node": context.get_node_id()[:8], "gpus": [str(gpu) for gpu in ray.get_gpu_ids()]}
    board.update.remote(point.name, state="running", epoch=0, **where)
    dvc, environment = dvc_command(), task_environment()

    def follow(line: str) -> None:
        match = EPOCH_LINE.search(line)
        if match:
            board.update.remote(point.name, epoch=int(match.group(1)))

    with clone(url, commit, point.name) as folder:
        run_logged([dvc, "pull", "--run-cache"], folder, environment)
        options = [part for value in point.overrides for part in ("-S", value)]
        code, lines = run_logged(
            [dvc, "exp", "run", "--pull", "-n", point.name, *options], folder, environment, follow
        )
        if code != 0:
            result = {"state": "failed", "error": error_line(lines), **where}
            board.update.remote(point.name, **result)
            return result
        run_logged([dvc, "push", "--run-cache"], folder, environment)
        figures = json.loads((folder / "metrics" / "eval.json").read_text())
    result = {"state": "done", **where, **{key: figures.get(key) for key in ("accuracy", "tta_accuracy")}}
    board.update.remote(point.name, **result)
    return result


class Board:
    """What each experiment is doing (a Ray actor): tasks write, the sweep's command reads."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, name: str, **fields: Any) -> None:
        self.rows.setdefault(name, {}).update(fields)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.rows


# ----------------------------------------------------------------------------- the command's side


def describe(name: str, row: dict[str, Any]) -> str:
    """One experiment's line."""
    state = row.get("state", "waiting")
    where = (
        f"node {row['node']}" + (f", GPU {','.join(row['gpus'])}" if row.get("gpus") else "")
        if "node" in row
        else ""
    )
    if state == "running":
        return f"{name}: running on {where}, epoch {row.get('epoch', 0)}"
    if state == "done":
        figures = ", ".join(
            f"{key} {row[key]:.4f}" for key in ("accuracy", "tta_accuracy") if row.get(key) is not None
        )
        return f"{name}: done on {where}: {figures}"
    if state == "failed":
        return f"{name}: failed on {where}: {row.get('error', '')}"
    return f"{name}: {state}"


@dataclass(frozen=True)
class Resources:
    """What one training asks Ray for: `gpus` on a cluster with GPUs (default: train.nproc), else
    `cpus`."""

    gpus: float | None
    cpus: float
    nproc: int

    def options(self, cluster: dict[str, float]) -> dict[str, Any]:
        if cluster.get("GPU", 0) > 0:
            return {"num_gpus": self.gpus if self.gpus is not None else self.nproc, "num_cpus": 1}
        return {"num_gpus": 0, "num_cpus": self.cpus}


def run_sweep(
    folder: Path,
    address: str,
    points: list[Point],
    remote: str,
    per_run: Resources,
    write: Any = print,
) -> int:
    """Run the points not yet on the remote as Ray tasks; pull the results; the exit code."""
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        raise PipelineError("Ray is not installed: pip install -e '.[ray]'") from None
    url, commit = on_the_remote(folder, remote)
    finished = finished_on_the_remote(folder, remote)
    pending = [point for point in points if point.name not in finished]
    for point in points:
        if point.name in finished:
            write(f"{point.name}: already on {remote}, not run again")
    if not pending:
        write(f"all {len(points)} experiments are on {remote}")
        return pull_and_show(folder, remote, [point.name for point in points], write)
    forwarded = {name: os.environ[name] for name in ("CIFAR10_CHECKPOINTS",) if name in os.environ}
    try:
        ray.init(
            address=address, runtime_env={"env_vars": forwarded} if forwarded else None, log_to_driver=False
        )
    except (ConnectionError, ValueError) as error:
        raise PipelineError(f"cannot join the Ray cluster at {address}: {error}") from None
    try:
        # The board lives on this machine's node: a node that dies takes its tasks (Ray retries
        # them elsewhere) but never what the sweep shows.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        board = ray.remote(Board).options(num_cpus=0, scheduling_strategy=here).remote()
        write(f"{len(pending)} experiment(s) on {address}: preparing the data once")
        ray.get(ray.remote(prepare_data).options(num_cpus=1, max_retries=3).remote(url, commit))
        cluster = ray.cluster_resources()  # type: ignore[no-untyped-call]
        task = ray.remote(run_point).options(max_retries=3, **per_run.options(cluster))
        running = {task.remote(url, commit, point, board): point for point in pending}
        outcomes = follow_tasks(ray, running, board, write)
    finally:
        ray.shutdown()
    failed = [name for name, outcome in outcomes.items() if outcome.get("state") != "done"]
    code = pull_and_show(folder, remote, [point.name for point in points if point.name not in failed], write)
    if failed:
        write(f"error: {len(failed)} of {len(points)} experiment(s) failed: {', '.join(failed)}")
        return 1
    return code


def follow_tasks(ray: Any, running: dict[Any, Point], board: Any, write: Any) -> dict[str, dict[str, Any]]:
    """Wait for the tasks, writing each experiment's line when it changes; Ctrl-C cancels them."""
    outcomes: dict[str, dict[str, Any]] = {}
    shown: dict[str, str] = {}
    remaining = list(running)
    try:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=0.5)
            for reference in ready:
                name = running[reference].name
                try:
                    outcomes[name] = ray.get(reference)
                except Exception as error:  # the task raised, or Ray gave up on it
                    outcomes[name] = {"state": "failed", "error": str(error).strip().splitlines()[-1]}
                    board.update.remote(name, **outcomes[name])
            rows = ray.get(board.snapshot.remote())
            for point in running.values():
                line = describe(point.name, rows.get(point.name, {}))
                if shown.get(point.name) != line:
                    shown[point.name] = line
                    write(line)
        done = sum(outcome.get("state") == "done" for outcome in outcomes.values())
        write(f"total: {done} done, {len(outcomes) - done} failed, of {len(running)}")
    except KeyboardInterrupt:
        # Not force: Ray raises KeyboardInterrupt in each task, which stops its commands and
        # removes its clone; waited for (a while) before the driver leaves, as Ray then kills them.
        for reference in remaining:
            ray.cancel(reference)
        ray.wait(remaining, num_returns=len(remaining), timeout=60)
        finished = sorted(name for name, outcome in outcomes.items() if outcome.get("state") == "done")
        write(f"stopped: cancelled {len(remaining)} task(s); finished: {', '.join(finished) or 'none'}")
        raise
    return outcomes


def pull_and_show(folder: Path, remote: str, names: list[str], write: Any) -> int:
    """Pull the finished experiments from the remote and show them beside the baseline."""
    if names:
        result = subprocess.run(
            [dvc_command(), "exp", "pull", remote, *names], cwd=folder, capture_output=True, text=True
        )
        if result.returncode != 0:
            write(f"error: dvc exp pull: {error_line((result.stderr + result.stdout).splitlines())}")
            return 1
    shown = subprocess.run(
        [
            dvc_command(),
            "exp",
            "show",
            "--no-pager",
            "--only-changed",
            "--drop",
            "Created|State|Executor|data\\..*|.*/.*",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    write(shown.stdout.rstrip())
    return 0 if shown.returncode == 0 else 1
