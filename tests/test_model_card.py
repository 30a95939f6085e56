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


def test_the_plots_stage_imports_no_torch() -> None:
    """What `cifar10 plots` imports to check the model's card and draw: importing torch alone takes
    seconds, more than drawing the pictures."""
    code = (
        "import sys, stages.plots, pipeline.plots, pipeline.data, pipeline.model_card; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
