from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ParamsError
from pipeline.params import load_params, training_digest
from tests.conftest import REPO

PARAMS = REPO / "params.yaml"


def error_for(overrides: list[str], path: Path = PARAMS) -> ParamsError:
    with pytest.raises(ParamsError) as caught:
        load_params(path, overrides)
    return caught.value


def test_repository_params_load_into_frozen_sections() -> None:
    params = load_params(PARAMS)
    assert params.data.sha256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert params.model.arch == "resnet18" and params.model.width == 64
    assert params.preprocess.val_size == 5000
    with pytest.raises(Exception, match="frozen"):
        params.train.lr = 1.0  # type: ignore[misc]


def test_override_uses_dvc_syntax_and_yaml_values() -> None:
    params = load_params(PARAMS, ["train.epochs=5", "train.augment.flip=false", "train.weight_decay=5e-4"])
    assert params.train.epochs == 5
    assert params.train.augment.flip is False
    assert params.train.weight_decay == pytest.approx(5e-4)  # YAML 1.2 float, as DVC writes it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], "train.lrr: unknown key"),
        (["train.augment.blur=1"], "train.augment.blur: unknown key"),
        (["train.epochs=five"], "train.epochs: input should be a valid integer"),
        (["train.epochs=2.5"], "train.epochs: input should be a valid integer"),
        (["train.flip=yes"], "train.flip: unknown key"),
        (["train.augment.flip=1"], "train.augment.flip: input should be a valid boolean"),
        (["train.lr=0"], "train.lr: must be > 0"),
        (["train.lr=-1"], "train.lr: must be > 0"),
        (["train.warmup=1.5"], "train.warmup: must be <= 1"),
        (["model.arch=vgg"], "model.arch: input should be 'resnet18' or 'tutorial'"),
        (["data.sha256=abc"], "data.sha256: string should match pattern"),
        (["train.device=gpu"], "train.device: string should match pattern"),
        (["train.lr.peak=1"], "train.lr: is a value, not a section"),
        (["train.epochs"], "expected KEY=VALUE"),
        (["train.momentum=0"], "nesterov needs momentum > 0"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    error = error_for(overrides)
    assert message in str(error)
    assert error.exit_code == 2
    assert "\n" not in str(error)


def test_missing_key_in_file(tmp_path: Path) -> None:
    text = PARAMS.read_text().replace("  lr: 0.2", "  # lr removed")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert "train.lr: missing key" in str(error_for([], path))


def test_missing_file(tmp_path: Path) -> None:
    assert "params file not found" in str(error_for([], tmp_path / "absent.yaml"))


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  url: x\n  sha256: [unclosed\nmodel:\n")
    error = error_for([], path)
    assert f"{path}:" in str(error) and "invalid YAML" in str(error)


def test_training_digest_ignores_runtime_keys_only() -> None:
    base = load_params(PARAMS)
    runtime = load_params(PARAMS, ["train.device=cpu", "train.nproc=2", "train.compile=false"])
    changed = load_params(PARAMS, ["train.lr=0.1"])
    digest = training_digest(base.model, base.train)
    assert training_digest(runtime.model, runtime.train) == digest
    assert training_digest(changed.model, changed.train) != digest
