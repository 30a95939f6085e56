"""`cifar10 predict IMAGE...`: the top classes of users' own images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    configure_logging,
    read_params,
    run_as_script,
    user_errors,
)
from stages.model_check import check_model
from stages.paths import MODEL

Images = Annotated[
    list[Path],
    typer.Argument(metavar="IMAGE...", help="PNG, JPEG or TIFF files, any size.", show_default=False),
]
ModelFile = Annotated[
    Path, typer.Option("--model", metavar="FILE", help="Weights to use (they carry what predict needs).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def command(
    images: Images,
    model: ModelFile = MODEL,
    as_json: AsJson = False,
    params_file: ParamsFile = DEFAULT_PARAMS,
    overrides: Overrides = None,
) -> None:
    """Classify images with the trained model: top 3 classes and probabilities (params `evaluate`).

    Each image is read on its own: an unreadable one gets an error line, the others are still
    classified, and the exit code is 1 if any failed. Outside a repository (no params.yaml, none
    named) the shipped evaluate settings are used; inside one, the default model must have been
    trained with the params there.
    """
    with user_errors():
        from pipeline.errors import ModelFileError
        from pipeline.params import SHIPPED_EVALUATE, EvaluateParams, params_not_found, repository_above
        from pipeline.predict import classify

        if model == MODEL and not params_file.exists() and repository_above(params_file) is not None:
            raise params_not_found(params_file)  # below the root of a repository: its model is there
        if params_file == DEFAULT_PARAMS and not params_file.exists() and not overrides:
            configure_logging()
            settings = EvaluateParams.model_validate(SHIPPED_EVALUATE)
        else:
            params = read_params(params_file, overrides)
            settings = params.evaluate
            if model == MODEL and model.is_file():  # the repository's own model: that of these params
                check_model(params, f"{params_file}{' with -S' if overrides else ''}")
        if model == MODEL and not model.exists():
            raise ModelFileError(
                f"{MODEL}: no trained model here; make one with `dvc repro` (or `cifar10 train`), "
                "or name one with --model"
            )
        results = classify(model, images, settings)
    for result in results:
        if "error" in result:
            typer.echo(f"error: {result['error']}", err=True)
        elif not as_json:
            ranked = ", ".join(f"{entry['class']} {entry['probability']:.1%}" for entry in result["top"])
            typer.echo(f"{result['image']}: {ranked}")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    if any("error" in result for result in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    run_as_script(command)
