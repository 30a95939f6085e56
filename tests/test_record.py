"""The record as an invariant, checked the way it can break: random sequences of the commands users
run (hand runs of each stage with and without -S, `dvc repro`, `dvc exp run` plain, `--temp` and
queued, `dvc commit -f`, `dvc exp save`, `dvc checkout -f`, `dvc exp apply`, `git checkout --
params.yaml`, hand edits of params.yaml, `git commit`, and Ctrl-C or kill -9 of a run's process
group at a random moment followed by a rerun or a finish by hand), each followed by a check of
every record DVC holds: the workspace's dvc.lock, HEAD's, each experiment's and each run-cache
entry.

The one case left out is the user's own assertion (docs/experiments.md, "What DVC records is
true"): `dvc commit` or `dvc exp save` while params.yaml holds values that no run of the pipeline
has made outputs from (edited by hand, `git checkout -- params.yaml`, or written by a `dvc exp run
-S` that was stopped before it ran a stage of them). The sequence tracks those keys and draws no
`dvc commit` or `dvc exp save` while there are any; nothing else is left out.

The default `pytest` runs a few short sequences; `pytest -m long` (run by .ci/run) many longer
ones, from fixed seeds. A violation prints the shortest command sequence that shows it, as shell
lines: the sequence up to the failing step, then without each earlier step that it does not need.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_tiny_archive, set_params
from tests.test_dvc import BIN, make_repository

pytestmark = pytest.mark.dvc

STAGES = ("download", "preprocess", "train", "evaluate", "plots")
ARCHIVE, MODEL = "data/raw/cifar-10-binary.tar.gz", "models/model.safetensors"
TRAIN_METRICS, TRAIN_LOG = "metrics/train.json", "metrics/train_log.tsv"
EVAL_METRICS, EVAL_REPORT, CONFUSION = "metrics/eval.json", "reports/eval.json", "metrics/confusion.csv"
# What each picture names in its made_from, and the file of it
PICTURE_SOURCES = {"model_sha256": MODEL, "confusion_sha256": CONFUSION, "train_log_sha256": TRAIN_LOG}
# The values a sequence sets, by the stage that owns each key (the first one that reads it).
VALUES: dict[str, dict[str, list[Any]]] = {
    "preprocess": {"preprocess.val_size": [20, 30]},
    "train": {"train.seed": [0, 1, 2], "train.epochs": [2, 3], "model.width": [4, 8]},
    "evaluate": {"evaluate.tta": [True, False]},
}
EVERY_VALUE = {key: values for keys in VALUES.values() for key, values in keys.items()}
QUIET = {
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


@dataclass(frozen=True)
class Interrupt:
    signal: str  # "SIGINT" (Ctrl-C) or "SIGKILL" (kill -9), sent to the command's process group
    after_lines: int  # once the command has printed this many lines (at its end if it prints fewer)


@dataclass(frozen=True)
class Step:
    """One command of a sequence. `command` is its argv, or ("edit", key, value) for a hand edit
    of params.yaml, ("queue", *-S options) for `dvc exp run --queue` then `dvc queue start`, and
    ("dvc", "exp", "apply", "#N") for the N-th experiment (in name order) at the time it runs."""

    command: tuple[str, ...]
    interrupt: Interrupt | None = None
    then: str = ""  # after an interrupt: "rerun" (the same command) or "finish" (the stage by hand)

    def shell(self) -> str:
        if self.command[0] == "edit":
            return f"# edit params.yaml by hand: {self.command[1]} = {json.dumps(self.command[2])}"
        if self.command[0] == "queue":
            return " ".join(["dvc exp run --queue", *self.command[1:], "&& dvc queue start"])
        line = " ".join(self.command)
        if self.interrupt is not None:
            kind = "Ctrl-C" if self.interrupt.signal == "SIGINT" else "kill -9"
            line += f"   # {kind} after {self.interrupt.after_lines} lines of output"
        return line


@dataclass
class Sequence:
    """A repository and what has been run in it."""

    repo: Path
    lines: list[str] = field(default_factory=list)  # the shell lines run so far
    asserted: set[str] = field(default_factory=set)  # keys changed with no run of them since
    # False while DVC's own state between two of its steps may be on disk: a `dvc exp run` stopped
    # just after it restored a stage from its run-cache, and the command after it failed
    settled: bool = True

    def environment(self) -> dict[str, str]:
        return {**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(self, argv: tuple[str, ...], interrupt: Interrupt | None = None) -> tuple[int, str]:
        """Run a command in its own process group; with `interrupt`, send its signal to the group
        once the command has printed that many lines. (exit code, what it printed)."""
        process = subprocess.Popen(
            argv,
            cwd=self.repo,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert process.stdout is not None
        printed: list[str] = []
        for line in process.stdout:
            printed.append(line)
            if interrupt is not None and len(printed) == interrupt.after_lines:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, getattr(signal, interrupt.signal))
        # the output ends once every process of the group that writes to it has exited
        return process.wait(timeout=600), "".join(printed)

    def params(self) -> dict[str, Any]:
        from pipeline.params import flatten

        return flatten(load_yaml((self.repo / "params.yaml").read_text()))

    def experiments(self) -> list[str]:
        return sorted(name for name, _ in experiment_refs(self.repo))


def argv(command: tuple[str, ...]) -> tuple[str, ...]:
    """The program path for a command's first word (the test's own environment's dvc and cifar10)."""
    return (str(BIN / command[0]), *command[1:]) if command[0] in ("dvc", "cifar10") else command


def overrides(command: tuple[str, ...]) -> list[str]:
    """The -S options of a command, as `-S key=value` pairs."""
    return [item for index, item in enumerate(command) if index and command[index - 1] == "-S"]


def interrupted_stage(output: str, command: tuple[str, ...]) -> str | None:
    """The stage a stopped command was at: a hand run's own; for DVC, the one it was running, or
    the one after the last it finished (None if it had finished them all)."""
    if command[0] == "cifar10":
        return command[1]
    current: str | None = STAGES[0]
    for line in output.splitlines():
        for stage in STAGES:
            if f"Running stage '{stage}'" in line:
                current = stage
            elif f"Stage '{stage}' didn't change" in line or f"Stage '{stage}' is cached" in line:
                after = STAGES.index(stage) + 1
                current = STAGES[after] if after < len(STAGES) else None
    return current


def execute(sequence: Sequence, step: Step) -> str:
    """Run one step and return what it printed; keep `sequence.asserted` and `sequence.settled`
    up to date."""
    before = sequence.params()
    command = step.command
    ran: list[tuple[tuple[str, ...], int, str]] = []  # (command, exit code, output) of each run
    if command[0] == "edit":
        set_params(sequence.repo / "params.yaml", [f"{command[1]}={json.dumps(command[2])}"])
    elif command[0] == "queue":
        code, printed = sequence.run(argv(("dvc", "exp", "run", "--queue", *command[1:])))
        ran.append((command, code, printed + (wait_for_the_queue(sequence) if code == 0 else "")))
    elif command[:3] == ("dvc", "exp", "apply"):
        names = sequence.experiments()
        if names:
            name = names[int(command[3].lstrip("#")) % len(names)]
            sequence.lines[-1] = f"dvc exp apply {name}"
            ran.append(((*command[:3], name), *sequence.run(argv((*command[:3], name)))))
    else:
        ran.append((command, *sequence.run(argv(command), step.interrupt)))
        if step.interrupt is not None:
            follow = command
            stage = interrupted_stage(ran[0][2], command)
            if step.then == "finish" and "--temp" not in command and stage is not None:
                follow = ("cifar10", stage, *[part for item in overrides(command) for part in ("-S", item)])
            sequence.lines.append(
                " ".join(follow) + ("   # finish by hand" if follow != command else "   # again")
            )
            ran.append((follow, *sequence.run(argv(follow))))
            if ran[-1][1] != 0 and command[0] == "dvc":  # DVC's own state between two of its steps
                sequence.settled = False
    after = sequence.params()
    if command[0] != "cifar10":  # a stage's own -S values are written with the stale outputs removed
        sequence.asserted |= {key for key in after if after.get(key) != before.get(key)}
    for done, code, printed in ran:
        if code == 0:
            settle(sequence, done, printed, after)
    return "".join(printed for _, _, printed in ran)


def settle(sequence: Sequence, command: tuple[str, ...], printed: str, params: dict[str, Any]) -> None:
    """What a command that succeeded re-established: the keys of the stages it ran, and (unless it
    wrote nothing) files on disk made from each other."""
    from pipeline.params import STAGES as ORDER
    from pipeline.params import recorded_keys

    workspace_run = command[:2] == ("dvc", "repro") or (
        command[:3] in (("dvc", "exp", "run"), ("dvc", "exp", "apply")) and "--temp" not in command
    )
    if command[:3] == ("dvc", "checkout", "-f"):  # the outputs are those dvc.lock names
        sequence.asserted = params_unlike_the_lock(sequence.repo, params)
    elif command[0] == "cifar10":
        sequence.asserted -= recorded_keys(command[1])
    elif "--downstream" in command:
        sequence.asserted -= {key for stage in ORDER[ORDER.index("train") :] for key in recorded_keys(stage)}
    elif workspace_run:
        sequence.asserted = set()
    else:
        return
    if "skipping" not in printed or command[0] != "cifar10":
        sequence.settled = True


def params_unlike_the_lock(repo: Path, params: dict[str, Any]) -> set[str]:
    lock = repo / "dvc.lock"
    if not lock.exists():
        return set(params)
    recorded = {
        key: value
        for record in load_yaml(lock.read_text())["stages"].values()
        for key, value in record_params(record).items()
    }
    return {key for key, value in recorded.items() if params.get(key) != value}


def wait_for_the_queue(sequence: Sequence) -> str:
    """`dvc queue start`, then wait until its worker has run every queued experiment."""
    code, printed = sequence.run(argv(("dvc", "queue", "start")))
    assert code == 0, printed
    while True:
        code, status = sequence.run(argv(("dvc", "queue", "status")))
        rows = [line.split() for line in status.splitlines()[1:] if line.strip()]
        if not any(row[-1] in ("Queued", "Running") for row in rows if not row[0].startswith("Worker")):
            return printed + status
        # the worker is running the experiment: wait on it rather than poll at a pace
        for record in (sequence.repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.json"):
            with contextlib.suppress(ValueError, OSError, ChildProcessError):
                pid = int(json.loads(record.read_text())["pid"])
                wait_for_process(pid, timeout=300)


def wait_for_process(pid: int, timeout: float) -> None:
    """Return once process `pid` has exited (or at `timeout` seconds)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(timeout)


# ----------------------------------------------------------------------------- the records


def experiment_refs(repo: Path) -> list[tuple[str, str]]:
    """(name, commit) of every experiment: refs/exps/<2>/<38>/<name>, not DVC's own refs."""
    listing = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    refs = []
    for line in listing.splitlines():
        name, commit = line.split()
        parts = name.split("/")
        if len(parts) == 5 and len(parts[2]) == 2:
            refs.append((parts[4], commit))
    return refs


def git_file(repo: Path, revision: str, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def records(repo: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, stage, record) for every stage record DVC holds."""
    sources: list[tuple[str, str | None]] = [
        ("dvc.lock", (repo / "dvc.lock").read_text() if (repo / "dvc.lock").exists() else None)
    ]
    sources.append(("HEAD:dvc.lock", git_file(repo, "HEAD", "dvc.lock")))
    sources += [
        (f"experiment {name}:dvc.lock", git_file(repo, commit, "dvc.lock"))
        for name, commit in experiment_refs(repo)
    ]
    for where, text in sources:
        if text:
            for stage, record in load_yaml(text)["stages"].items():
                yield where, stage, record
    for entry in sorted((repo / ".dvc/cache/runs").glob("*/*/*")):
        record = load_yaml(entry.read_text())
        stage = record["cmd"].removeprefix("python -m stages.")
        yield f"run-cache entry {entry.parent.name[:8]}/{entry.name[:8]}", stage, record


def load_yaml(text: str) -> Any:
    """YAML through libyaml's parser: a check reads a dvc.lock per record source, quickly."""
    return yaml.load(text, Loader=yaml.CSafeLoader)


def record_params(record: dict[str, Any]) -> dict[str, Any]:
    from pipeline.params import flatten

    return flatten(record.get("params", {}).get("params.yaml", {}))


def entries(record: dict[str, Any], kind: str) -> dict[str, str]:
    """{path: md5} of a record's deps or outs."""
    return {entry["path"]: entry["md5"] for entry in record.get(kind, [])}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Records:
    """Checks of stage records against the files they name, read from DVC's cache by md5; also
    whether one model is ever paired with two sets of test predictions, over all records."""

    def __init__(self, repo: Path) -> None:
        self.cache = repo / ".dvc/cache/files/md5"
        self.predictions: dict[str, tuple[str, str]] = {}  # model md5 + evaluate params: (rows, where)

    def file(self, md5: str, inside: str | None = None) -> Path | None:
        """A cached file by md5 (`inside` a cached directory: by its path there); None if absent."""
        found = self.cache / md5[:2] / md5[2:]
        if not found.exists():
            return None
        if inside is None:
            return found
        listing = {entry["relpath"]: entry["md5"] for entry in json.loads(found.read_text())}
        return self.file(listing[inside]) if inside in listing else None

    def data_digest(self, md5: str) -> str | None:
        from pipeline.data import prepared_digest

        meta = self.file(md5, "meta.json")
        return prepared_digest(json.loads(meta.read_text())) if meta else None

    def check(self, where: str, stage: str, record: dict[str, Any]) -> list[str]:
        """What is false in one record: the params it lists against what its outputs were made
        with, the inputs its outputs name against its deps, and whether its outputs are complete."""
        params, deps, outs = record_params(record), entries(record, "deps"), entries(record, "outs")
        checks: dict[str, Callable[..., list[str]]] = {
            "preprocess": self.preprocess,
            "train": self.train,
            "evaluate": self.evaluate,
            "plots": self.plots,
        }
        found = checks[stage](where, params, deps, outs) if stage in checks else []
        return [f"{where}: {stage} {problem}" for problem in found]

    def card(self, model_md5: str, params: dict[str, Any], data_md5: str | None = None) -> list[str]:
        from pipeline.model_card import read_card
        from pipeline.params import flatten

        model = self.file(model_md5)
        if model is None:
            return []
        card = read_card(model)
        trained = flatten(card.params or {})
        problems = [
            f"lists {key}={params[key]} beside a model trained with {trained[key]}"
            for key in sorted(trained)
            if key in params and params[key] != trained[key]
        ]
        if data_md5 is not None and card.data_sha256 != self.data_digest(data_md5):
            problems.append("lists a model trained on other data than the data/prepared it lists")
        return problems

    def preprocess(
        self, where: str, params: dict[str, Any], deps: dict[str, str], outs: dict[str, str]
    ) -> list[str]:
        meta, archive = self.file(outs["data/prepared"], "meta.json"), self.file(deps[ARCHIVE])
        if meta is None or archive is None:
            return []
        made = json.loads(meta.read_text())
        if made["source_sha256"] != sha256(archive) or made["val_size"] != params["preprocess.val_size"]:
            return ["lists data/prepared of another archive or other params"]
        return []

    def train(
        self, where: str, params: dict[str, Any], deps: dict[str, str], outs: dict[str, str]
    ) -> list[str]:
        problems = self.card(outs[MODEL], params, deps["data/prepared"])
        log, figures = self.file(outs[TRAIN_LOG]), self.file(outs[TRAIN_METRICS])
        if log and figures:
            epochs = len(log.read_text().splitlines()) - 1
            if epochs != params["train.epochs"] or json.loads(figures.read_text()).get("epoch") != epochs:
                problems.append(f"lists a log of {epochs} epochs for train.epochs={params['train.epochs']}")
        return problems

    def evaluate(
        self, where: str, params: dict[str, Any], deps: dict[str, str], outs: dict[str, str]
    ) -> list[str]:
        problems = self.card(deps[MODEL], params)
        model = self.file(deps[MODEL])
        figures, report, table = (self.file(outs[path]) for path in (EVAL_METRICS, EVAL_REPORT, CONFUSION))
        if not (model and figures and report and table):
            return problems
        made_from = json.loads(report.read_text()).get("made_from", {})
        if made_from.get("model_sha256") != sha256(model):
            problems.append("lists a test report of another model than the one it lists")
        if made_from.get("data_sha256") != self.data_digest(deps["data/prepared"]):
            problems.append("lists a test report of other data than it lists")
        rows = list(csv.DictReader(io.StringIO(table.read_text())))
        accuracy = json.loads(figures.read_text()).get("accuracy")
        correct = sum(row["actual"] == row["predicted"] for row in rows) / len(rows)
        if accuracy is None or abs(accuracy - correct) > 1e-9:
            problems.append(f"lists {EVAL_METRICS} = {figures.read_text().strip()}, not of its predictions")
        settings = {key: value for key, value in params.items() if key.startswith("evaluate.")}
        key = f"{deps[MODEL]} {json.dumps(settings, sort_keys=True)}"
        predicted = ",".join(row["predicted"] for row in rows)
        first, first_where = self.predictions.setdefault(key, (predicted, where))
        if first != predicted:
            problems.append(f"pairs its model with other test predictions than {first_where}")
        return problems

    def plots(
        self, where: str, params: dict[str, Any], deps: dict[str, str], outs: dict[str, str]
    ) -> list[str]:
        from pipeline.plots import read_made_from

        problems = self.card(deps[MODEL], params)
        sources = {name: self.file(deps[path]) for name, path in PICTURE_SOURCES.items()}
        for path, md5 in outs.items():
            picture = self.file(md5)
            if picture is None:
                continue
            made_from = read_made_from(picture)
            problems += [
                f"lists {path}, drawn from another {PICTURE_SOURCES[name]} than it lists"
                for name, source in sources.items()
                if source is not None and made_from.get(name) != sha256(source)
            ]
        return problems


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def check(sequence: Sequence) -> list[str]:
    """Every record DVC holds; then the stages `dvc status` calls up to date; then (when settled)
    the files on disk."""
    repo, checker = sequence.repo, Records(sequence.repo)
    problems = [
        problem for where, stage, record in records(repo) for problem in checker.check(where, stage, record)
    ]
    status = subprocess.run(
        [str(BIN / "dvc"), "status", "--json"],
        cwd=repo,
        env=sequence.environment(),
        capture_output=True,
        text=True,
    )
    lock = repo / "dvc.lock"
    if status.returncode == 0 and lock.exists():
        changed = json.loads(status.stdout or "{}")
        for stage, record in load_yaml(lock.read_text())["stages"].items():
            if stage in changed:
                continue
            problems += [
                f"dvc status: {stage} up to date, but {path} is not the file dvc.lock names"
                for path, recorded in entries(record, "outs").items()
                if (repo / path).is_file() and md5(repo / path) != recorded
            ]
            figures = {"train": TRAIN_METRICS, "evaluate": EVAL_METRICS}.get(stage)
            if figures and json.loads((repo / figures).read_text()) == {}:
                problems.append(f"dvc status: {stage} up to date with no figures")
    if sequence.settled:
        problems += check_disk(repo)
    return problems


def check_disk(repo: Path) -> list[str]:
    """The property itself: the outputs of a later stage were made from the earlier stages'
    outputs on disk now, or they are absent (the metrics file of a removed stage may be `{}`)."""
    from pipeline.data import load_meta, prepared_digest
    from pipeline.model_card import read_card
    from pipeline.plots import read_made_from

    problems = []
    model, prepared, report = repo / MODEL, repo / "data/prepared", repo / EVAL_REPORT
    data = prepared_digest(load_meta(prepared)) if (prepared / "meta.json").exists() else None
    if model.exists() and read_card(model).data_sha256 != data:
        problems.append("on disk: the model was not trained on data/prepared")
    if report.exists():
        made_from = json.loads(report.read_text())["made_from"]
        if not model.exists() or made_from != {"model_sha256": sha256(model), "data_sha256": data}:
            problems.append(f"on disk: {EVAL_REPORT} is not of the model and data on disk")
    figures, others = repo / EVAL_METRICS, report.exists() or (repo / CONFUSION).exists()
    if others and figures.exists() and json.loads(figures.read_text()) == {}:
        problems.append(f"on disk: {EVAL_METRICS} is {{}} beside other outputs of evaluate")
    for picture in sorted((repo / "plots").glob("*.png")):
        made_from = read_made_from(picture)
        problems += [
            f"on disk: {picture.relative_to(repo)} was not drawn from {path}"
            for name, path in PICTURE_SOURCES.items()
            if not (repo / path).exists() or made_from[name] != sha256(repo / path)
        ]
    return problems


# ----------------------------------------------------------------------------- the sequences


def draw_step(rng: random.Random, sequence: Sequence) -> Step:
    """One command, drawn as users might run it next."""

    def setting(keys: dict[str, list[Any]]) -> tuple[str, ...]:
        key = rng.choice(sorted(keys))
        return ("-S", f"{key}={json.dumps(rng.choice(keys[key]))}")

    def some_settings() -> tuple[str, ...]:
        return setting(EVERY_VALUE) if rng.random() < 0.7 else ()

    def hand_run() -> tuple[str, ...]:
        stage = rng.choices(STAGES, weights=[1, 1, 4, 3, 2])[0]
        options = setting(VALUES[stage]) if stage in VALUES and rng.random() < 0.5 else ()
        return ("cifar10", stage, *options)

    kinds: list[tuple[float, Callable[[], Step]]] = [
        (5, lambda: Step(hand_run())),
        (2, lambda: Step(("dvc", "repro"))),
        (1, lambda: Step(("dvc", "repro", "--force", "--downstream", "train"))),
        (3, lambda: Step(("dvc", "exp", "run", *some_settings()))),
        (1, lambda: Step(("dvc", "exp", "run", "--temp", *some_settings()))),
        (0.5, lambda: Step(("queue", *setting(EVERY_VALUE)))),
        (1, lambda: Step(("dvc", "checkout", "-f"))),
        (1, lambda: Step(("dvc", "exp", "apply", f"#{rng.randrange(100)}"))),
        (1, lambda: Step(("git", "checkout", "--", "params.yaml"))),
        (
            2,
            lambda: Step(
                ("edit", *(lambda key: (key, rng.choice(EVERY_VALUE[key])))(rng.choice(sorted(EVERY_VALUE))))
            ),
        ),
        (1, lambda: Step(("git", "commit", "-qam", "a step"))),
        (3, lambda: interrupted()),
    ]
    if not sequence.asserted:  # else the user's own assertion: left out (see the docstring)
        kinds += [(2, lambda: Step(("dvc", "commit", "-f"))), (2, lambda: Step(("dvc", "exp", "save")))]

    def interrupted() -> Step:
        command = rng.choice(
            [
                ("cifar10", "train", *some_settings()),
                ("cifar10", rng.choice(["evaluate", "plots", "preprocess"])),
                ("dvc", "repro"),
                ("dvc", "exp", "run", *some_settings()),
                ("dvc", "exp", "run", "--temp", *some_settings()),
            ]
        )
        stop = Interrupt(rng.choice(["SIGINT", "SIGKILL"]), rng.randint(1, 14))
        return Step(command, stop, rng.choice(["rerun", "finish"]))

    weights, makers = zip(*kinds, strict=True)
    return rng.choices(makers, weights=weights)[0]()


def run_steps(
    base: Path, folder: Path, next_step: Callable[[Sequence], Step | None]
) -> tuple[list[Step], list[str], list[str]]:
    """Run steps in a fresh copy of `base`, checking after each, until `next_step` gives None or
    a check fails: (the steps, their shell lines, the problems found)."""
    if folder.exists():
        shutil.rmtree(folder)
    sequence = Sequence(Path(shutil.copytree(base, folder, symlinks=True)))
    steps: list[Step] = []
    while (step := next_step(sequence)) is not None:
        steps.append(step)
        sequence.lines.append(step.shell())
        output = execute(sequence, step)
        assert "Traceback" not in output or step.interrupt is not None, f"{step.shell()}\n{output}"
        problems = check(sequence)
        if problems:
            return steps, sequence.lines, problems
    return steps, sequence.lines, []


def drawn(seed: int, count: int) -> Callable[[Sequence], Step | None]:
    """`count` steps drawn from `seed`, each as the state of the sequence allows."""
    rng = random.Random(seed)
    remaining = iter(range(count))
    return lambda sequence: draw_step(rng, sequence) if next(remaining, None) is not None else None


def replayed(steps: list[Step]) -> Callable[[Sequence], Step | None]:
    remaining = iter(steps)
    return lambda sequence: next(remaining, None)


def shortest(
    base: Path, folder: Path, steps: list[Step], lines: list[str], problems: list[str], budget: int
) -> tuple[list[str], list[str]]:
    """Drop each earlier step the violation does not need (one replay per step tried, at most `budget`)."""
    kept = list(steps)
    index = 0
    while index < len(kept) - 1 and budget > 0:
        budget -= 1
        trial = kept[:index] + kept[index + 1 :]
        _, trial_lines, trial_problems = run_steps(base, folder, replayed(trial))
        if trial_problems and len(trial_lines) <= len(lines):
            kept, lines, problems = trial, trial_lines, trial_problems
        else:
            index += 1
    return lines, problems


def report(lines: list[str], problems: list[str]) -> str:
    script = "\n".join(lines)
    return f"the record broke after:\n\n{script}\n\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone's state: tiny params, `dvc repro` done and committed."""
    folder = tmp_path_factory.mktemp("committed")
    archive = make_tiny_archive(folder / "mirror" / "cifar-10-binary.tar.gz")
    repo = make_repository(folder / "repo", archive.path.as_uri(), archive.sha256)
    set_params(repo / "params.yaml", ["train.epochs=3"])
    environment = {**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in ([str(BIN / "dvc"), "repro"], ["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=repo, env=environment, check=True, capture_output=True)
    return repo


def run_sequence(committed: Path, tmp_path: Path, seed: int, count: int) -> None:
    steps, lines, problems = run_steps(committed, tmp_path / "sequence", drawn(seed, count))
    if problems:
        lines, problems = shortest(
            committed, tmp_path / "shrinking", steps, lines, problems, budget=len(steps)
        )
        pytest.fail(report(lines, problems), pytrace=False)


@pytest.mark.xdist_group("record")  # with the short sequences: one worker builds the repository once
def test_a_run_stopped_during_training_and_finished_by_hand_is_never_recorded_with_old_test_figures(
    committed: Path, tmp_path: Path
) -> None:
    """Ctrl-C of `dvc exp run -S` during training, the run finished by hand, then `dvc commit -f`:
    DVC refuses to record evaluate's outputs (removed), the hand run says how to record it, and
    after that every stage is of the new model."""
    sequence = Sequence(Path(shutil.copytree(committed, tmp_path / "repo", symlinks=True)))
    stopped = Step(("dvc", "exp", "run", "-S", "train.seed=8"), Interrupt("SIGINT", 7), "finish")
    sequence.lines.append(stopped.shell())
    printed = execute(sequence, stopped)
    assert "epoch 1" in printed and "Running stage 'evaluate'" not in printed, printed
    assert "`dvc commit -f train` records it, then `dvc repro` makes evaluate and plots from it" in printed, (
        printed
    )
    assert check(sequence) == []
    code, output = sequence.run(argv(("dvc", "commit", "-f")))
    assert code != 0 and "does not exist" in output, output
    assert check(sequence) == []
    for command in (("dvc", "commit", "-f", "train"), ("dvc", "repro")):
        code, output = sequence.run(argv(command))
        assert code == 0, output
    code, output = sequence.run(argv(("dvc", "status")))
    assert "up to date" in output and check(sequence) == []


@pytest.mark.xdist_group("record")
@pytest.mark.parametrize("seed", [1, 2])
def test_random_sequences_of_commands_keep_the_record_true(
    committed: Path, tmp_path: Path, seed: int
) -> None:
    run_sequence(committed, tmp_path, seed, count=3)


@pytest.mark.long
@pytest.mark.parametrize("seed", range(100, 120))
def test_long_random_sequences_of_commands_keep_the_record_true(
    committed: Path, tmp_path: Path, seed: int
) -> None:
    run_sequence(committed, tmp_path, seed, count=16)
