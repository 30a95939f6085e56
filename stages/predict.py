"""`cifar10 predict IMAGE...`: the top classes of users' own images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stages.common import DEFAULT_PARAMS, Overrides, ParamsFile, read_params, user_errors
from stages.paths import MODEL

Images = Annotated[list[Path], typer.Argument(help="PNG, JPEG or TIFF files, any size.", show_default=False)]
ModelFile = Annotated[Path, typer.Option("--model", help="Weights to use.")]
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
    classified, and the exit code is 1 if any failed.
    """
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline.predict import classify

        results = classify(model, images, params.evaluate)
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
