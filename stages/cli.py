"""The `cifar10` command: one subcommand per pipeline stage."""

from __future__ import annotations

import typer

from stages import checkpoints, download, evaluate, plots, predict, preprocess, train

app = typer.Typer(
    name="cifar10",
    help="CIFAR-10 pipeline: download -> preprocess -> train -> evaluate -> plots, plus predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command("download")(download.command)
app.command("preprocess")(preprocess.command)
app.command("train")(train.command)
app.command("evaluate")(evaluate.command)
app.command("plots")(plots.command)
app.command("predict")(predict.command)
app.command("checkpoints")(checkpoints.command)


def main() -> None:
    app()
