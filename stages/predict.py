"""`cifar10 predict IMAGE...`: the top classes of users' own images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stages.common import DEFAULT_PARAMS, Overrides, ParamsFile, read_params, user_errors
from stages.paths import MODEL

Images = Annotated[list[Path], typer.Argument(help="PNG or JPEG files, any size.", show_default=False)]
ModelFile = Annotated[Path, typer.Option("--model", help="Weights to use.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def command(
    images: Images,
    model: ModelFile = MODEL,
    as_json: AsJson = False,
    params_file: ParamsFile = DEFAULT_PARAMS,
    overrides: Overrides = None,
) -> None:
    """Classify images with the trained model: top 3 classes and probabilities (device: evaluate.device)."""
    with user_errors():
        params = read_params(params_file, overrides)
        from pipeline.predict import classify

        results = classify(model, images, params.evaluate.device)
        if as_json:
            typer.echo(json.dumps(results, indent=2))
            return
        for result in results:
            ranked = ", ".join(f"{entry['class']} {entry['probability']:.1%}" for entry in result["top"])
            typer.echo(f"{result['image']}: {ranked}")
