"""`cifar10 sweep -S 'train.seed=0,1' --ray ADDRESS`: a sweep on a Ray cluster, one task per
experiment, every result pulled back into one `dvc exp show` (stages/cluster.py)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from stages.common import DEFAULT_PARAMS, Overrides, read_params, user_errors

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="The Ray cluster (its head's address; `auto`: the cluster this machine belongs to). "
        "Without it, the command that runs the same sweep with DVC's queue on this machine.",
    ),
]
Name = Annotated[str | None, typer.Option("--name", "-n", help="Experiments NAME-1, NAME-2, ...")]
Gpus = Annotated[
    float | None, typer.Option("--gpus", help="GPUs per training on a GPU cluster (default: train.nproc).")
]
Cpus = Annotated[float, typer.Option("--cpus", help="CPUs per training on a cluster without GPUs.")]
Remote = Annotated[str, typer.Option("--remote", help="The git remote every node clones and pushes to.")]


def command(
    overrides: Overrides = None,
    ray_address: RayAddress = None,
    name: Name = None,
    gpus: Gpus = None,
    cpus: Cpus = 1.0,
    remote: Remote = "origin",
) -> None:
    """Run one experiment per point of a grid (`-S key=a,b`, as `dvc exp run --queue -S`) as Ray
    tasks, each on a GPU (or CPUs) somewhere in the cluster; pull them all back and show them. A
    sweep started again with the same grid runs only what is not on the remote yet."""
    with user_errors():
        from pipeline.errors import ParamsError
        from stages.cluster import Resources, grid, run_sweep

        if not overrides:
            raise ParamsError("give the grid with -S, e.g. -S 'train.seed=0,1,2'")
        params = read_params(DEFAULT_PARAMS, [])
        points = grid(overrides, name)
        for point in points:  # every value valid before anything starts
            read_params(DEFAULT_PARAMS, point.overrides)
        if ray_address is None:
            options = " ".join(f"-S {shlex.quote(value)}" for value in overrides)
            typer.echo(
                f"{len(points)} experiment(s). On this machine, with DVC's queue:\n"
                f"  dvc exp run --queue {options}{f' -n {name}' if name else ''} && dvc queue start -j 2\n"
                "On a Ray cluster: the same command with --ray ADDRESS (`pip install -e '.[ray]'`)"
            )
            return
        code = run_sweep(
            Path.cwd(), ray_address, points, remote, Resources(gpus, cpus, params.train.nproc), typer.echo
        )
    raise typer.Exit(code)
