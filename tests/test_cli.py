"""Each command through typer's CliRunner: options, outputs, and one-line errors with the right exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from stages.cli import app
from tests.conftest import (
    FAST_TRAINING,
    RECORDS,
    REPO,
    TinyArchive,
    official_members,
    records,
    write_archive,
)

runner = CliRunner()


def invoke(*arguments: str) -> Result:
    return runner.invoke(app, list(arguments))


def mirror(archive: TinyArchive) -> list[str]:
    return ["-S", f"data.url={archive.path}", "-S", f"data.sha256={archive.sha256}"]


def fast() -> list[str]:
    return [argument for item in FAST_TRAINING for argument in ("-S", item)]


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_help_lists_every_stage() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("download", "preprocess", "train", "evaluate", "predict"):
        assert name in result.stdout


def test_download_and_preprocess(project: Path, tiny_archive: TinyArchive) -> None:
    result = invoke("download", *mirror(tiny_archive))
    assert result.exit_code == 0, result.output
    assert (project / "data/raw/cifar-10-binary.tar.gz").read_bytes() == tiny_archive.path.read_bytes()
    result = invoke("preprocess", "-S", "preprocess.val_size=10")
    assert result.exit_code == 0, result.output
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert meta["counts"] == {"train": 90, "test": 20, "val": 10}


def test_params_errors_exit_2_before_any_io(project: Path, tiny_archive: TinyArchive) -> None:
    result = invoke("download", *mirror(tiny_archive), "-S", "train.lr=0")
    assert_one_line_error(result, 2, "train.lr: must be > 0")
    assert not (project / "data").exists()
    assert_one_line_error(
        invoke("preprocess", "-S", "preprocess.val_sise=3"), 2, "preprocess.val_sise: unknown key"
    )
    assert_one_line_error(
        invoke("train", "--params", "missing.yaml"), 2, "missing.yaml: params file not found"
    )
    (project / "broken.yaml").write_text("train: [1, 2\n")
    assert_one_line_error(invoke("evaluate", "--params", "broken.yaml"), 2, "broken.yaml:")


def test_download_mismatch_is_one_line_and_leaves_nothing(project: Path, tiny_archive: TinyArchive) -> None:
    result = invoke("download", "-S", f"data.url={tiny_archive.path}", "-S", f"data.sha256={'a' * 64}")
    assert_one_line_error(result, 1, f"expected {'a' * 64}, got {tiny_archive.sha256}")
    assert list((project / "data/raw").iterdir()) == []


def test_preprocess_without_archive(project: Path) -> None:
    assert_one_line_error(invoke("preprocess"), 1, "archive not found (run `cifar10 download` first)")


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after download, preprocess and train on the tiny archive, made once for this module."""
    folder = tmp_path_factory.mktemp("trained")
    archive = TinyArchive(folder / "archive.tar.gz", "", records(5 * RECORDS, 1), records(RECORDS, 2))
    archive.sha256 = write_archive(
        archive.path, official_members(archive.train_records, archive.test_records)
    )
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert invoke("download", *mirror(archive)).exit_code == 0
        assert invoke("preprocess", *fast()).exit_code == 0
        result = invoke("train", *fast())
        assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def trained(project: Path, trained_once: Path) -> Path:
    """A fresh copy of the trained project, made the current directory."""
    shutil.copytree(trained_once, project, dirs_exist_ok=True)
    return project


def test_train_writes_weights_metrics_and_log(trained: Path) -> None:
    metrics = json.loads((trained / "metrics/train.json").read_text())
    assert metrics["epochs"] == 2 and metrics["device"] == "cpu" and metrics["processes"] == 1
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "train_seconds",
        "images_per_second",
    ):
        assert isinstance(metrics[key], float), key
    log = (trained / "metrics/train_log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert [line.split("\t")[0] for line in log[1:]] == ["1", "2"]
    assert (trained / "models/model.safetensors").stat().st_size > 0
    assert list((trained / "models/checkpoint").iterdir()) == []


def test_evaluate_writes_metrics_and_confusion(trained: Path) -> None:
    result = invoke("evaluate", *fast(), "-S", "evaluate.tta_translate=true")
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained / "metrics/eval.json").read_text())
    assert set(metrics) == {"accuracy", "loss", "per_class", "tta_accuracy", "images", "seconds"}
    assert metrics["images"] == 20 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["tta_accuracy"] <= 1
    assert len(metrics["per_class"]) == 10 and all(0 <= value <= 1 for value in metrics["per_class"].values())
    rows = (trained / "metrics/confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 21
    correct = sum(actual == predicted for actual, predicted in (row.split(",") for row in rows[1:]))
    assert correct / 20 == pytest.approx(metrics["accuracy"])
    per_class_from_rows = {
        name: np.mean([p == name for a, p in (row.split(",") for row in rows[1:]) if a == name])
        for name in metrics["per_class"]
    }
    assert per_class_from_rows == pytest.approx(metrics["per_class"])
    result = invoke("evaluate", *fast(), "-S", "evaluate.tta=false")
    assert "tta_accuracy" not in json.loads((trained / "metrics/eval.json").read_text())


@pytest.mark.parametrize("damage", ["missing", "truncated", "other arch", "foreign"])
def test_evaluate_with_bad_weights_writes_no_metrics(trained: Path, damage: str) -> None:
    weights = trained / "models/model.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "foreign":
        import torch
        from safetensors.torch import save_file

        save_file({"weight": torch.ones(2)}, str(weights))
    else:
        from pipeline.weights import read_safetensors

        tensors, metadata = read_safetensors(weights, "model file")
        from safetensors.torch import save_file

        card = json.loads(metadata["cifar10"]) | {"arch": "tutorial"}  # resnet18 weights, labelled tutorial
        save_file(tensors, str(weights), metadata={"cifar10": json.dumps(card)})
    result = invoke("evaluate", *fast())
    assert_one_line_error(result, 1, str(Path("models/model.safetensors")))
    assert not (trained / "metrics/eval.json").exists()


def test_predict_on_generated_images(trained: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wide = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(wide)
    gray = tmp_path / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(gray)
    result = invoke("predict", str(wide), str(gray), "--json", *fast())
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [entry["image"] for entry in predictions] == [str(wide), str(gray)]
    for entry in predictions:
        probabilities = [item["probability"] for item in entry["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1.0001
    text = invoke("predict", str(wide), *fast())
    assert text.exit_code == 0 and text.stdout.startswith(f"{wide}: {predictions[0]['top'][0]['class']} ")
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(trained / "models/model.safetensors", moved)
    assert invoke("predict", str(gray), "--model", str(moved), *fast()).exit_code == 0


def test_predict_rejects_non_images(trained: Path, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    assert_one_line_error(invoke("predict", str(text_file), *fast()), 1, "notes.png: not a readable image")
    assert_one_line_error(
        invoke("predict", str(tmp_path / "absent.jpg"), *fast()), 1, "absent.jpg: no such file"
    )
    assert_one_line_error(
        invoke("predict", str(text_file), "--model", "nope.safetensors", *fast()), 1, "not a readable image"
    )
