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
    assert load_params(PARAMS, ["train.augment.flip=alternate"]).train.augment.flip == "alternate"
    assert params.train.weight_decay == pytest.approx(5e-4)  # YAML 1.2 float, as DVC writes it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], "train.lrr: unknown key (did you mean train.lr?)"),
        (["train.epoch=3"], "train.epoch: unknown key (did you mean train.epochs?)"),
        (
            ["trian.lr=3"],
            "trian is not a section of the pipeline (data, preprocess, model, train, evaluate) "
            "(did you mean train.lr?)",
        ),
        (["train.augment.blur=1"], "train.augment.blur: unknown key"),
        (["train.epochs=five"], "train.epochs: input should be a valid integer, not 'five'"),
        (["train.epochs=2.5"], "train.epochs: input should be a valid integer, not 2.5"),
        (["train.lr=fast"], "train.lr: input should be a valid number, not 'fast'"),
        (["train.flip=yes"], "train.flip: unknown key (did you mean train.augment.flip?)"),
        (["train.augment.flip=1"], "train.augment.flip: must be true, false or alternate"),
        (["train.augment.flip=yes"], "train.augment.flip: must be true, false or alternate"),
        (["train.lr=0"], "train.lr: must be > 0, not 0"),
        (["train.lr=-1"], "train.lr: must be > 0, not -1"),
        (["train.warmup=1.5"], "train.warmup: must be <= 1, not 1.5"),
        (["model.arch=vgg"], "model.arch: must be one of resnet18 or tutorial, not 'vgg'"),
        (["train.optimizer=sgdd"], "train.optimizer: must be one of sgd, adam or muon, not 'sgdd'"),
        (["data.sha256=abc"], "data.sha256: expected the archive's SHA-256 as 64 hexadecimal digits"),
        (["data.url=http://[::1"], "data.url: not a valid URL"),
        (["train.device=gpu"], "train.device: string should match pattern"),
        (["train.lr.peak=1"], "train.lr: is a value, not a section"),
        (["train.epochs"], "expected KEY=VALUE"),
        (["train.momentum=0"], "nesterov needs momentum > 0"),
        # booleans as DVC reads them (YAML 1.2): yes, on and 1 are not true
        (["train.nesterov=yes"], "train.nesterov: must be true or false (YAML 1.2 booleans), not 'yes'"),
        (["train.nesterov=on"], "train.nesterov: must be true or false (YAML 1.2 booleans), not 'on'"),
        (["train.nesterov=1"], "train.nesterov: must be true or false (YAML 1.2 booleans), not 1"),
        (["train.compile=1"], "train.compile: must be auto, true or false"),
        (["train.compile=yes"], "train.compile: must be auto, true or false"),
        (["train.seed=4294967296"], "train.seed: must be <= 4294967295"),
        (["preprocess.seed=-1"], "preprocess.seed: must be >= 0"),
        (["train.nproc=3", "train.batch_size=250"], "batch_size 250 is not divisible by nproc 3"),
        (["lightning.foo=1"], "-S lightning.foo: lightning is not a section of the pipeline"),
        (["epochs=1"], "-S epochs: epochs is not a section of the pipeline"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    error = error_for(overrides)
    assert message in str(error)
    assert error.exit_code == 2
    assert "\n" not in str(error)


def test_booleans_and_numbers_read_as_dvc_reads_them() -> None:
    params = load_params(PARAMS, ["train.nesterov=True", "train.compile=false", "train.seed=4294967295"])
    assert params.train.nesterov is True and params.train.compile is False
    assert params.train.seed == 2**32 - 1
    assert load_params(PARAMS, ["train.compile=auto"]).train.compile == "auto"


def test_upper_case_sha256_is_normalised() -> None:
    digest = "C4A38C50A1BC5F3A1C5537F2155AB9D68F9F25EB1ED8D9DDDA3DB29A59BCA1DD"
    assert load_params(PARAMS, [f"data.sha256={digest}"]).data.sha256 == digest.lower()


def test_sections_of_other_tools_are_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text() + "\nlightning:\n  foo: 1\n")
    with caplog.at_level("INFO", logger="pipeline.params"):
        params = load_params(path)
    assert params.train.epochs == load_params(PARAMS).train.epochs
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: leaving section lightning to other tools"
    ]
    path.write_text(PARAMS.read_text().replace("  lr: 0.2", "  lr: 0.2\n  learning_rate: 0.1"))
    assert "train.learning_rate: unknown key" in str(
        error_for([], path)
    )  # inside our sections: still an error


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    text = PARAMS.read_text().replace("  epochs: 26\n", "  epochs: 1\n  epochs: 2\n")
    path.write_text(text)
    line = text.splitlines().index("  epochs: 2") + 1
    error = error_for([], path)
    assert f"{path}:{line}: invalid YAML: found duplicate key" in str(error) and error.exit_code == 2


def test_params_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(PARAMS.read_bytes() + b"# caf\xe9\n")
    error = error_for([], path)
    assert "not UTF-8 text" in str(error) and error.exit_code == 2


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
