"""The named recipes: each sets exactly its values, all valid, and `cifar10 recipe` prints them as
the `-S` options `dvc exp run` takes."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from pipeline.params import flatten, load_params
from pipeline.recipes import RECIPES
from stages.cli import app
from tests.conftest import REPO


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_recipe_sets_exactly_its_values_and_they_validate(name: str) -> None:
    options = RECIPES[name].options()
    shipped = flatten(load_params(REPO / "params.yaml", []).model_dump(mode="json"))
    values = options[1::2]
    assert options[0::2] == ["-S"] * len(values)
    applied = flatten(load_params(REPO / "params.yaml", values).model_dump(mode="json"))
    changed = {key: value for key, value in applied.items() if value != shipped[key]}
    expected = {key: value for key, value in RECIPES[name].values.items() if value != shipped[key]}
    assert changed == expected


def test_the_command_prints_a_recipe_as_options_for_dvc_exp_run() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["recipe", "cpu"])
    assert result.exit_code == 0
    assert shlex.split(result.stdout) == RECIPES["cpu"].options()  # what $(cifar10 recipe cpu) gives
    listing = runner.invoke(app, ["recipe"])
    assert [line.split()[0] for line in listing.stdout.splitlines()] == list(RECIPES)
    unknown = runner.invoke(app, ["recipe", "fastest"])
    assert unknown.exit_code == 2 and unknown.stderr.strip() == (
        f"error: no recipe 'fastest'; the recipes: {', '.join(RECIPES)}"
    )
