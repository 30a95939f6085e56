"""`cifar10 checkpoints`: list the saved state of interrupted runs, and remove it."""

from __future__ import annotations

import datetime
from typing import Annotated

import typer

from stages.common import configure_logging, run_as_script, user_errors
from stages.paths import MAX_DAYS_VARIABLE, MAX_GB_VARIABLE, checkpoint_limits, checkpoints_folder

Remove = Annotated[
    list[str] | None,
    typer.Option("--remove", metavar="NAME", help="Remove this checkpoint (its file name). Repeatable."),
]
RemoveAll = Annotated[bool, typer.Option("--all", help="Remove every checkpoint in the folder.")]

SUMMARY_KEYS = ("model.arch", "model.width", "train.epochs", "train.batch_size", "train.lr", "train.seed")


def command(remove: Remove = None, remove_all: RemoveAll = False) -> None:
    """List the checkpoints of interrupted runs (newest first), or remove some or all of them.

    Each run (params, data and training code) has one file; `cifar10 train` resumes it. The
    folder is $CIFAR10_CHECKPOINTS, else checkpoints/ of the repository. Checkpoints older than
    $CIFAR10_CHECKPOINTS_MAX_DAYS (30) days, and the oldest beyond $CIFAR10_CHECKPOINTS_MAX_GB (5)
    gigabytes, are removed when a run saves one.
    """
    with user_errors():
        configure_logging()
        from pipeline.checkpoint_folder import describe_checkpoints, remove_checkpoint
        from pipeline.errors import PipelineError
        from pipeline.params import flatten

        folder = checkpoints_folder()
        found = describe_checkpoints(folder)
        if remove_all or remove:
            names = {info.path.name for info in found}
            unknown = sorted(set(remove or []) - names)
            if unknown:
                raise PipelineError(f"no checkpoint {', '.join(unknown)} in {folder}")
            for info in found:
                if remove_all or info.path.name in (remove or []):
                    remove_checkpoint(info.path)
                    typer.echo(f"removed {info.path}")
            return
        gigabytes, days = checkpoint_limits()
        total = sum(info.size for info in found) / 1e9
        typer.echo(
            f"{folder}: {len(found)} checkpoint(s), {total:.2f} GB (keeps {gigabytes:g} GB and "
            f"{days:g} days: {MAX_GB_VARIABLE}, {MAX_DAYS_VARIABLE})"
        )
        for info in found:
            when = datetime.datetime.fromtimestamp(info.modified).strftime("%Y-%m-%d %H:%M")
            if info.epoch is None:
                typer.echo(f"  {info.path.name}  {info.size / 1e6:.0f} MB  {when}  (not readable)")
                continue
            params = flatten(info.params or {})
            summary = " ".join(f"{key}={params[key]}" for key in SUMMARY_KEYS if key in params)
            position = f"epoch {info.epoch + 1}, step {info.step}"
            typer.echo(f"  {info.path.name}  {info.size / 1e6:.0f} MB  {when}  at {position}  {summary}")


if __name__ == "__main__":
    run_as_script(command)
