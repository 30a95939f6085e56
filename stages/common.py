"""What every stage command shares: the --params/-S options, logging, and one-line user errors."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import ParamsError, PipelineError
from pipeline.params import (
    STAGES,
    Params,
    expand_keys,
    file_values,
    flatten,
    load_params,
    owned_keys,
    owner,
    read_keys,
    recorded_keys,
    write_values,
)
from stages.paths import LOCKS, METRICS, OUTPUTS

logger = logging.getLogger(__name__)

ParamsFile = Annotated[Path, typer.Option("--params", metavar="FILE", help="Params file.", show_default=True)]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-S", metavar="KEY=VALUE", help="Override a param, as `dvc exp run -S` does. Repeatable."
    ),
]
DEFAULT_PARAMS = Path("params.yaml")


class _NotAProblem(logging.Filter):
    """Drops torch lines that are not problems of a run: "No CUDA runtime is found" (Inductor on a
    machine with a CUDA toolkit but no GPU: CPU training needs none) and "Profiler (record)
    function ... will be ignored" (Dynamo meeting DistributedDataParallel's profiler marks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("No CUDA runtime is found", "Profiler function", "Profiler record"))


_QUIET_LOGGERS = (
    "torch.utils.cpp_extension",
    "torch._dynamo.variables.ctx_manager",
    "torch._dynamo.variables.torch",
)


def configure_logging() -> None:
    """INFO lines on stderr for the pipeline's loggers; rich formatting on a terminal."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, show_level=False, log_time_format="[%X]")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.set_name("cifar10")
    # "__main__": a stage module's own logger when dvc.yaml runs it as `python -m stages.<stage>`
    for name in ("pipeline", "stages", "__main__"):
        logger = logging.getLogger(name)
        logger.handlers = [existing for existing in logger.handlers if existing.get_name() != "cifar10"]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    for name in _QUIET_LOGGERS:
        quieted = logging.getLogger(name)
        if not any(isinstance(existing, _NotAProblem) for existing in quieted.filters):
            quieted.addFilter(_NotAProblem())


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a PipelineError into one line on stderr and its exit code, instead of a traceback."""
    try:
        yield
    except PipelineError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None


def read_params(params_file: Path, overrides: list[str] | None) -> Params:
    configure_logging()
    return load_params(params_file, overrides or [])


def remove_outputs(stages: Iterable[str]) -> list[Path]:
    """Delete what these stages wrote (files and folders); return what was there."""
    removed = []
    for stage in stages:
        for path in OUTPUTS[stage]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(path)
    return removed


def remove_later_outputs(stage: str, including_own: bool = False) -> list[Path]:
    """Remove every later stage's outputs (and, `including_own`, this stage's), leaving the later
    metrics files as `{}` (stages/paths.py, METRICS); return what was removed, metrics files
    aside. A later stage running in this workspace (by hand) is waited for: its outputs, of the
    inputs being replaced, are then removed too."""
    later = STAGES[STAGES.index(stage) + 1 :]
    with contextlib.ExitStack() as locks:
        for name in later:  # in pipeline order, as every run takes them: no deadlock
            locks.enter_context(stage_lock(name, wait=True))
        if including_own:
            remove_outputs([stage])
        removed = []
        from pipeline.files import write_json

        for name in later:
            removed_here = remove_outputs([name])
            if name in METRICS and (including_own or removed_here):
                write_json(METRICS[name], {})
            removed += [path for path in removed_here if path not in METRICS.values()]
    return removed


def remove_orphans(stage: str) -> None:
    """Call first in a run of `stage`. When its outputs are not all here (DVC removes them before
    it runs the stage; a user may delete one), the later stages' outputs were made from files that
    are gone: they are removed now, so that a run that then fails (bad params, data made with
    other params) leaves no later output beside inputs it was not made from. Not for download:
    its archive is fixed by its hash, so the same file comes back."""
    if stage == "download" or all(path.exists() for path in OUTPUTS[stage]):
        return
    configure_logging()
    removed = remove_later_outputs(stage)
    if removed:
        logger.info(
            "removed %s: made from outputs of `cifar10 %s` that are gone", ", ".join(map(str, removed)), stage
        )


class StageRun:
    """One run of a stage: its params (the file plus -S), and what keeps DVC's record true.

    The record holds if the files on disk hold this: the outputs of a later stage were made from
    the outputs of the earlier stages now on disk, or they are absent. So a run, by hand or by DVC,
    removes its own outputs and every later stage's just before it writes its first output
    (`replace_outputs`): DVC's `dvc commit` and `dvc exp save`, which record whatever is on disk,
    then find a later stage incomplete and refuse, instead of pairing its old outputs with new
    inputs.

    DVC records the params file beside a stage's outputs (`dvc repro`, `dvc commit`, `dvc exp
    save`, the run-cache), never a command's options. So a stage's -S values go into the params
    file before it runs, comments kept, as `dvc exp run -S` does, and the outputs made with the
    old values (the stage's own and every later stage's) are removed, as DVC removes a stage's
    outputs before running it. A stage writes only the keys it is the first to read; -S for a key
    an earlier stage sets (`cifar10 train -S preprocess.val_size=0`) is refused when it differs
    from the file. And the keys the stage is listed with in dvc.yaml must not change while it
    runs (a second `dvc exp run -S` in the same workspace rewrites params.yaml): if they do, it
    writes nothing and says so.
    """

    def __init__(self, stage: str, params_file: Path, overrides: list[str] | None) -> None:
        self.stage = stage
        self.params_file = params_file
        self.overrides = list(overrides or [])
        self.params = read_params(params_file, self.overrides)
        self.recorded: dict[str, Any] = {}
        self.replaced = False  # whether this run has removed the outputs it replaces

    def _recorded_in_file(self) -> dict[str, Any]:
        values = file_values(self.params_file)
        return {key: values.get(key) for key in recorded_keys(self.stage)}

    def begin(self, write: bool = True) -> None:
        """Write this stage's -S values into the params file (after removing the outputs made with
        the old ones) and note the values it runs with. Call once the stage's lock is held; with
        `write` false (a worker process of a run) only note them."""
        given = [  # in the order of the -S options
            key for item in self.overrides for key in sorted(expand_keys([item.partition("=")[0].strip()]))
        ]
        values = flatten(self.params.model_dump(mode="json"))
        in_file = file_values(self.params_file)
        ignored = [key for key in dict.fromkeys(given) if key not in read_keys(self.stage)]
        if ignored:
            logger.info(
                "-S %s: not read by `cifar10 %s`; %s keeps its value",
                ", ".join(ignored),
                self.stage,
                self.params_file,
            )
        changed = {
            key: values[key]
            for key in dict.fromkeys(given)
            if key in read_keys(self.stage)
            if write and values[key] != in_file.get(key)
        }
        upstream = [key for key in changed if key not in owned_keys(self.stage)]
        if upstream:
            key = upstream[0]
            raise ParamsError(
                f"-S {key}={json.dumps(changed[key])}: `cifar10 {self.stage}` only checks {key} "
                f"({self.params_file} has {json.dumps(in_file.get(key))}); it is set by `cifar10 "
                f"{owner(key)} -S {key}=...` or in {self.params_file}"
            )
        if changed:
            if set(changed) & recorded_keys(self.stage):  # not for run-time-only keys (data.url)
                removed = remove_outputs(STAGES[STAGES.index(self.stage) :])
                if removed:
                    logger.info(
                        "removed %s: made with the earlier values", ", ".join(str(path) for path in removed)
                    )
            write_values(self.params_file, changed)
            logger.info(
                "%s: set %s (a stage's -S values are written into it, as `dvc exp run -S` does, so "
                "that DVC records the params that made the outputs)",
                self.params_file,
                " ".join(f"{key}={json.dumps(value)}" for key, value in changed.items()),
            )
        self.recorded = self._recorded_in_file()

    def check_unchanged(self, outcome: str = "nothing was written") -> None:
        """Raise if a key of the params file this stage is listed with changed since it began."""
        try:
            now = self._recorded_in_file()
            changed = sorted(key for key in self.recorded if now[key] != self.recorded[key])
        except PipelineError as error:
            changed = [f"it no longer reads: {error}"]
        if changed:
            raise PipelineError(
                f"{self.params_file} changed while `cifar10 {self.stage}` ran ({', '.join(changed)}); "
                f"{outcome}, as DVC would record the new values beside outputs made with the old: run it "
                "again (DVC runs one experiment at a time in a workspace: `dvc exp run --queue` or "
                "`--temp` for more)"
            )

    def replace_outputs(self) -> None:
        """Remove this stage's outputs and every later stage's: call it just before the run writes
        its first output (it acts once per run). The later stages' metrics files are left as `{}`
        (stages/paths.py, METRICS), so that `dvc exp show` shows no figures of removed outputs
        beside this run's; `dvc commit` cannot record them, as the rest of their stage is gone.

        A later stage running in this workspace (by hand) is waited for: its outputs, of the
        inputs this run replaces, are then removed too."""
        if self.replaced:
            return
        removed = remove_later_outputs(self.stage, including_own=True)
        self.replaced = True
        if removed:
            logger.info("removed %s: made from the outputs this run replaces", ", ".join(map(str, removed)))

    @contextlib.contextmanager
    def writing(self, replace: bool = True) -> Iterator[None]:
        """Around the writing of the stage's outputs: the params are checked before and after, and
        (unless `replace` is false: the caller does it) the outputs it replaces removed first."""
        self.check_unchanged()
        if replace:
            self.replace_outputs()
        yield
        try:
            self.check_unchanged("the outputs just written were removed")
        except PipelineError:
            remove_outputs([self.stage])
            raise


def run_as_script(command: Callable[..., Any]) -> None:
    """`python -m stages.<stage>`: the stage's command alone, as dvc.yaml runs it."""
    typer.run(command)


def in_dvc_run() -> bool:
    """Whether DVC runs this command as a pipeline stage (`dvc repro`, `dvc exp run`)."""
    return bool(os.environ.get("DVC_STAGE"))


def stage_lock(stage: str, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """The workspace lock of one stage: a second `cifar10 <stage>` here is refused while this one
    runs (with `wait`, waited for)."""
    from pipeline.lock import exclusive

    return exclusive(LOCKS / f"{stage}.lock", f"`cifar10 {stage}`", wait=wait)


def say_how_to_record(stage: str) -> None:
    """After a run by hand in a DVC repository: if the workspace now differs from dvc.lock, one
    line saying what records it (`dvc commit -f` of the stages run by hand) and what makes the
    later stages (`dvc repro`)."""
    if in_dvc_run() or not (Path(".dvc").is_dir() and Path("dvc.lock").is_file()):
        return
    try:
        from dvc.repo import Repo

        with Repo(".") as repo:
            changed = set(repo.status())
    except Exception as error:  # DVC busy (a run holds its lock) or a broken repository: no advice
        logger.debug("dvc status: %s", error)
        return
    position = STAGES.index(stage) + 1
    to_commit = [name for name in STAGES[:position] if name in changed]
    to_make = [name for name in STAGES[position:] if name in changed]
    steps = [f"`dvc commit -f {' '.join(to_commit)}` records it"] if to_commit else []
    steps += [f"`dvc repro` makes {' and '.join(to_make)} from it"] if to_make else []
    if steps:
        logger.info("dvc.lock does not record this run: %s", ", then ".join(steps))
