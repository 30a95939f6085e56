"""`cifar10 checkpoints`: list the saved state of interrupted runs, and remove it."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from stages.common import configure_logging, run_as_script, user_errors
from stages.paths import MAX_DAYS_VARIABLE, MAX_GB_VARIABLE, checkpoint_limits, checkpoints_folder

Remove = Annotated[
    list[str] | None,
    typer.Option(
        "--remove",
        metavar="RUN",
        help="Remove this run's checkpoint (its run id as listed, or its file). Repeatable.",
    ),
]
RemoveAll = Annotated[bool, typer.Option("--all", help="Remove every checkpoint in the folder.")]

SUMMARY_KEYS = ("model.arch", "model.width", "train.epochs", "train.batch_size", "train.lr", "train.seed")


def size_text(size: int) -> str:
    """Bytes as a reader takes them in: 812 B, 45.2 kB, 90.1 MB, 1.25 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def command(remove: Remove = None, remove_all: RemoveAll = False) -> None:
    """List the checkpoints of interrupted runs (newest first), or remove some or all of them.

    Each run (params, data and training code) has one file, which `cifar10 train` resumes; the
    list shows each one's code, marked when it is this checkout's. The folder is
    $CIFAR10_CHECKPOINTS, else checkpoints/ of the repository. Checkpoints older than
    $CIFAR10_CHECKPOINTS_MAX_DAYS (30) days, and the oldest beyond $CIFAR10_CHECKPOINTS_MAX_GB (5)
    gigabytes, are removed when a run saves one.
    """
    with user_errors():
        configure_logging()
        from pipeline.checkpoint_folder import describe_checkpoints, remove_checkpoint
        from pipeline.errors import PipelineError
        from pipeline.params import flatten
        from pipeline.source import code_digest

        folder = checkpoints_folder()
        found = describe_checkpoints(folder)
        if remove_all or remove:
            by_name = {name: info for info in found for name in (info.run_id, info.path.name, str(info.path))}
            wanted = [Path(name).name.removesuffix(".safetensors") for name in remove or []]
            unknown = [name for name, run in zip(remove or [], wanted, strict=True) if run not in by_name]
            if unknown:
                raise PipelineError(
                    f"no checkpoint {', '.join(unknown)} in {folder} (`cifar10 checkpoints` lists them)"
                )
            chosen = found if remove_all else [by_name[run] for run in dict.fromkeys(wanted)]
            if not chosen:
                typer.echo(f"{folder}: no checkpoints to remove")
            for info in chosen:
                remove_checkpoint(info.path)
                typer.echo(f"removed {info.path}")
            return
        gigabytes, days = checkpoint_limits()
        typer.echo(
            f"{folder}: {len(found)} checkpoint(s), {size_text(sum(info.size for info in found))} (keeps "
            f"{gigabytes:g} GB and {days:g} days: {MAX_GB_VARIABLE}, {MAX_DAYS_VARIABLE})"
        )
        ours = code_digest(Path(__file__).with_name("train.py"))
        for info in found:
            when = datetime.datetime.fromtimestamp(info.modified).strftime("%Y-%m-%d %H:%M")
            if info.epoch is None:
                typer.echo(f"  {info.run_id}  {size_text(info.size)}  {when}  (not readable)")
                continue
            params = flatten(info.params or {})
            summary = " ".join(f"{key}={params[key]}" for key in SUMMARY_KEYS if key in params)
            code = (info.code_sha256 or "unknown")[:8] + (
                " (this checkout's)" if info.code_sha256 == ours else ""
            )
            typer.echo(
                f"  {info.run_id}  {size_text(info.size)}  {when}  at epoch {info.epoch + 1}, "
                f"step {info.step}  code {code}  {summary}"
            )


if __name__ == "__main__":
    run_as_script(command)
