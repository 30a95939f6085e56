"""What every stage command shares: the --params/-S options, logging, and one-line user errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import PipelineError
from pipeline.params import Params, differences, load_params
from stages.paths import LOCKS

logger = logging.getLogger(__name__)

ParamsFile = Annotated[Path, typer.Option("--params", help="Params file.", show_default=True)]
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


def note_overrides_unknown_to_dvc(params_file: Path, overrides: list[str] | None) -> None:
    """Say once, at the end of a stage, that -S values params.yaml does not have are not in DVC's record.

    DVC records params.yaml, not a command's -S options: after `cifar10 train -S train.seed=21`, a
    `dvc commit` would record the file's seed next to weights of seed 21. `dvc exp run -S` writes
    the values into params.yaml first, so the record stays right.
    """
    if not overrides or not Path("dvc.yaml").exists():
        return
    keys = differences(
        load_params(params_file).model_dump(), load_params(params_file, overrides).model_dump()
    )
    if keys:
        values = " ".join(f"-S {item}" for item in overrides if item.partition("=")[0].strip() in keys)
        logger.warning(
            "%s: not what %s says, and DVC records %s: it will not know these values "
            "(`dvc exp run %s` keeps the record right)",
            ", ".join(keys),
            params_file,
            params_file,
            values,
        )


def run_as_script(command: Callable[..., Any]) -> None:
    """`python -m stages.<stage>`: the stage's command alone, as dvc.yaml runs it."""
    typer.run(command)


def in_dvc_run() -> bool:
    """Whether DVC runs this command as a pipeline stage (`dvc repro`, `dvc exp run`)."""
    return bool(os.environ.get("DVC_STAGE"))


def stage_lock(stage: str) -> contextlib.AbstractContextManager[None]:
    """The workspace lock of one stage: a second `cifar10 <stage>` here is refused while this one runs."""
    from pipeline.lock import exclusive

    return exclusive(LOCKS / f"{stage}.lock", f"`cifar10 {stage}`")
