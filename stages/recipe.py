"""`cifar10 recipe [NAME]`: a named recipe as `-S` options, for `dvc exp run $(cifar10 recipe cpu)`."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.errors import ParamsError
from pipeline.recipes import RECIPES
from stages.common import run_as_script, user_errors

Name = Annotated[
    str | None, typer.Argument(metavar="NAME", help="A recipe; none: list them.", show_default=False)
]


def command(name: Name = None) -> None:
    """Print a recipe's params as `-S` options: `dvc exp run $(cifar10 recipe cpu)` runs it, and
    DVC records each value in params.yaml. Without NAME, list the recipes."""
    with user_errors():
        if name is None:
            for known, recipe in RECIPES.items():
                typer.echo(f"{known:<9} {recipe.summary}")
            return
        if name not in RECIPES:
            raise ParamsError(f"no recipe {name!r}; the recipes: {', '.join(RECIPES)}")
        typer.echo(" ".join(RECIPES[name].options()))


if __name__ == "__main__":
    run_as_script(command)
