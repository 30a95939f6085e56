"""What every stage command shares: the --params/-S options, logging, and one-line user errors."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import PipelineError
from pipeline.params import Params, load_params
from stages.paths import LOCKS

ParamsFile = Annotated[Path, typer.Option("--params", help="Params file.", show_default=True)]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-S", metavar="KEY=VALUE", help="Override a param, as `dvc exp run -S` does. Repeatable."
    ),
]
DEFAULT_PARAMS = Path("params.yaml")


class _NotAProblem(logging.Filter):
    """Drops torch's "No CUDA runtime is found" line, logged when Inductor compiles on a machine
    with a CUDA toolkit but no GPU: CPU training does not need one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


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
    for name in ("pipeline", "stages"):
        logger = logging.getLogger(name)
        logger.handlers = [existing for existing in logger.handlers if existing.get_name() != "cifar10"]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    torch_extensions = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(existing, _NotAProblem) for existing in torch_extensions.filters):
        torch_extensions.addFilter(_NotAProblem())


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


def stage_lock(stage: str) -> contextlib.AbstractContextManager[None]:
    """The workspace lock of one stage: a second `cifar10 <stage>` here is refused while this one runs."""
    from pipeline.lock import exclusive

    return exclusive(LOCKS / f"{stage}.lock", f"`cifar10 {stage}`")
