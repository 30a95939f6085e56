"""The `cifar10` command: one subcommand per pipeline stage."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from stages import checkpoints, download, evaluate, plots, predict, preprocess, recipe, sweep, train

# Set in the process `cifar10` starts as `python -m stages` in another checkout: it must find that
# checkout's code, and never start a third process.
CHECKOUT_VARIABLE = "CIFAR10_RUNS_CHECKOUT"


class Command(TyperCommand):
    """Click's plain help, with a positional argument shown by its metavar (`IMAGE...`) rather
    than Typer's `{images}...` and `<list[Path]>`."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [param.metavar or "" for param in self._of_kind(ctx, "argument")]

    def _of_kind(self, ctx: Any, kind: str) -> list[Any]:
        return [param for param in self.get_params(ctx) if param.param_type_name == kind]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [(param.metavar or "", param.help or "") for param in self._of_kind(ctx, "argument")]
        options = [param.get_help_record(ctx) for param in self._of_kind(ctx, "option")]
        for title, rows in (("Arguments", arguments), ("Options", [row for row in options if row])):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


app = typer.Typer(
    name="cifar10",
    help="CIFAR-10 pipeline: download -> preprocess -> train -> evaluate -> plots, plus predict. "
    "Run it from the repository root, where dvc.yaml and params.yaml are.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # click's help: paragraphs reflowed to the terminal's width
)
for name, module in (
    ("download", download),
    ("preprocess", preprocess),
    ("train", train),
    ("evaluate", evaluate),
    ("plots", plots),
    ("predict", predict),
    ("checkpoints", checkpoints),
    ("recipe", recipe),
    ("sweep", sweep),
):
    app.command(name, cls=Command)(module.command)


def package_version() -> str:
    try:
        return version("cifar10")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"cifar10 {package_version()}")
        raise typer.Exit()


@app.callback()
def options(
    version_option: Annotated[
        bool,
        typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """CIFAR-10 pipeline: download -> preprocess -> train -> evaluate -> plots, plus predict. Run it
    from the repository root, where dvc.yaml and params.yaml are."""


def run_this_checkouts_code(argv: list[str], environment: Any = os.environ) -> None:
    """In a checkout of this project other than the one `cifar10` was installed from, run that
    checkout's code, as `python -m stages` (what dvc.yaml runs) does there: replace this process.

    Never returns when it starts the checkout's code; returns at once elsewhere."""
    here = Path.cwd()
    if not ((here / "stages" / "cli.py").is_file() and (here / "pipeline" / "params.py").is_file()):
        return
    if (here / "stages").resolve() == Path(__file__).resolve().parent:
        return
    if environment.get(CHECKOUT_VARIABLE):  # already started for this checkout: another copy won
        typer.echo(
            f"error: {here} is a checkout of cifar10, but its code does not load here; run `python -m "
            "stages` with its arguments instead",
            err=True,
        )
        raise SystemExit(1)
    os.execve(
        sys.executable,
        [sys.executable, "-m", "stages", *argv],
        {**environment, CHECKOUT_VARIABLE: str(here)},
    )


def main() -> None:
    run_this_checkouts_code(sys.argv[1:])
    app()
