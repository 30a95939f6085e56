"""The model card, read from a model file's header alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ModelFileError
from pipeline.model import build_model
from pipeline.model_card import read_card
from pipeline.weights import save_model
from tests.conftest import REPO
from tests.test_weights import CARD


def test_the_card_is_read_back_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, build_model("tutorial", 4).state_dict(), CARD)
    assert read_card(path) == CARD
    path.write_bytes(path.read_bytes()[:-100])  # the header whole, the weights cut short
    with pytest.raises(ModelFileError, match="truncated or not a safetensors model file"):
        read_card(path)


@pytest.mark.parametrize(
    "modules",
    [
        "stages.plots, pipeline.plots, pipeline.data, pipeline.model_card",  # checks the card, draws
        "stages.checkpoints, pipeline.checkpoint_folder",  # lists checkpoints from their headers
    ],
)
def test_commands_that_read_only_headers_import_no_torch(modules: str) -> None:
    """`cifar10 plots` and `cifar10 checkpoints` read safetensors headers only: importing torch
    alone takes seconds, more than drawing the pictures or listing the files."""
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
