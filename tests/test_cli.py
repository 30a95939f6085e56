"""Each command through typer's CliRunner: options, outputs, and one-line errors with the right exit code."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from pipeline.metrics import wilson_interval
from stages.cli import app
from tests.conftest import (
    FAST_TRAINING,
    RECORDS,
    REPO,
    TinyArchive,
    official_members,
    records,
    set_params,
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


def no_test_figures(folder: Path) -> bool:
    """No test figures in `folder`: evaluate's outputs absent, its metrics file at most `{}` (left by
    a run that removed them, so that `dvc exp show` shows none from DVC's cache)."""
    metrics = folder / "metrics/eval.json"
    return (not metrics.exists() or json.loads(metrics.read_text()) == {}) and not any(
        (folder / name).exists() for name in ("reports/eval.json", "metrics/confusion.csv")
    )


def test_help_lists_every_stage() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("download", "preprocess", "train", "evaluate", "plots", "predict"):
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
    (project / "latin1.yaml").write_bytes((project / "params.yaml").read_bytes() + b"# caf\xe9\n")
    assert_one_line_error(invoke("train", "--params", "latin1.yaml"), 2, "latin1.yaml: not UTF-8 text")
    result = invoke("train", "-S", "train.nproc=3", "-S", "train.batch_size=250")  # before any worker starts
    assert_one_line_error(result, 2, "train: batch_size 250 is not divisible by nproc 3")
    assert "worker" not in result.output


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
    # the model's figures only: what `dvc exp show` and `dvc metrics diff` list
    assert set(metrics) == {"val_accuracy", "epoch"}
    assert metrics["epoch"] == 2 and isinstance(metrics["val_accuracy"], float)
    details = json.loads((trained / "reports/train.json").read_text())
    for key in ("train_loss", "train_accuracy", "val_loss"):
        assert isinstance(details[key], float), key
    assert details["epochs"] == 2 and details["device"] == "cpu" and details["processes"] == 1
    assert isinstance(details["train_seconds"], float) and isinstance(details["images_per_second"], float)
    log = (trained / "metrics/train_log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert [line.split("\t")[0] for line in log[1:]] == ["1", "2"]
    assert (trained / "models/model.safetensors").stat().st_size > 0
    assert list((trained / "checkpoints").iterdir()) == []  # removed once the run is complete


def test_evaluate_writes_metrics_and_confusion(trained: Path) -> None:
    result = invoke("evaluate", *fast(), "-S", "evaluate.tta_translate=true")
    assert result.exit_code == 0, result.output
    figures = json.loads((trained / "metrics/eval.json").read_text())
    assert set(figures) == {"accuracy", "tta_accuracy", "loss"}
    details = json.loads((trained / "reports/eval.json").read_text())
    assert set(details) == {
        "accuracy_ci95",
        "per_class",
        "tta_accuracy_ci95",
        "images",
        "precision",
        "seconds",
        "made_from",
    }
    # the report names the model and the data it is of
    from pipeline.data import load_meta, prepared_digest
    from pipeline.files import sha256_file

    assert details["made_from"] == {
        "model_sha256": sha256_file(trained / "models/model.safetensors"),
        "data_sha256": prepared_digest(load_meta(trained / "data/prepared")),
    }
    metrics = figures | details
    assert metrics["images"] == 20 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["tta_accuracy"] <= 1
    assert metrics["precision"] in ("bf16", "fp32")
    interval = metrics["accuracy_ci95"]
    assert interval == wilson_interval(round(metrics["accuracy"] * 20), 20)
    assert interval["low"] <= metrics["accuracy"] <= interval["high"]
    assert len(metrics["per_class"]) == 10 and all(0 <= value <= 1 for value in metrics["per_class"].values())
    rows = [row.split(",") for row in (trained / "metrics/confusion.csv").read_text().splitlines()]
    assert rows[0] == ["image", "actual", "predicted", "confidence"] and len(rows) == 21
    assert [int(row[0]) for row in rows[1:]] == list(range(20))
    assert all(0.1 <= float(row[3]) <= 1 for row in rows[1:])  # the top class of 10: at least a tenth
    correct = sum(actual == predicted for _, actual, predicted, _ in rows[1:])
    assert correct / 20 == pytest.approx(metrics["accuracy"])
    per_class_from_rows = {
        name: np.mean([p == name for _, a, p, _ in rows[1:] if a == name]) for name in metrics["per_class"]
    }
    assert per_class_from_rows == pytest.approx(metrics["per_class"])
    result = invoke("evaluate", *fast(), "-S", "evaluate.tta=false", "-S", "evaluate.precision=fp32")
    plain = json.loads((trained / "metrics/eval.json").read_text())
    assert "tta_accuracy" not in plain
    assert json.loads((trained / "reports/eval.json").read_text())["precision"] == "fp32"


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
    assert no_test_figures(trained)


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


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and ends there: enough for Pillow's size checks, nothing to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_predict_reports_each_bad_image_and_classifies_the_others(trained: Path, tmp_path: Path) -> None:
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for path in good:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    broken, folder, bomb = tmp_path / "broken.png", tmp_path / "folder.png", tmp_path / "bomb.png"
    broken.write_text("not an image")
    folder.mkdir()
    bomb.write_bytes(png_header(14000, 14000))
    absent = tmp_path / "absent.jpg"
    names = [good[0], broken, folder, absent, bomb, good[1]]
    result = invoke("predict", *map(str, names), *fast())
    assert result.exit_code == 1
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [str(good[0]), str(good[1])]
    assert result.stderr.splitlines() == [
        f"error: {broken}: not a readable image (cannot identify image file {str(broken)!r})",
        f"error: {folder}: is a folder, not an image file",
        f"error: {absent}: no such file",
        f"error: {bomb}: larger than the 178,956,970 pixels this command decodes (a guard against "
        "decompression bombs); scale it down first",
    ]
    as_json = invoke("predict", *map(str, names), "--json", *fast())
    assert as_json.exit_code == 1
    entries = json.loads(as_json.stdout)
    assert [entry["image"] for entry in entries] == list(map(str, names))
    assert ["error" in entry for entry in entries] == [False, True, True, True, True, False]
    assert entries[0]["top"] == entries[5]["top"]  # the same pixels, wherever they stand
    assert_one_line_error(
        invoke("predict", str(good[0]), "--model", "nope.safetensors", *fast()), 1, "not found"
    )
    assert_one_line_error(
        invoke("predict", str(good[0]), "--model", str(tmp_path), *fast()), 1, "is a folder, not a model file"
    )


def test_predict_scales_deep_greyscale_images(trained: Path, tmp_path: Path) -> None:
    from pipeline.predict import load_image

    sixteen_bit, floating, eight_bit = tmp_path / "g16.png", tmp_path / "f.tiff", tmp_path / "g8.png"
    Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16)).save(sixteen_bit)  # 32896 = 128 * 257
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(floating)
    Image.fromarray(np.full((40, 40), 128, dtype=np.uint8)).save(eight_bit)
    # a 16-bit PNG opens as I;16, or as I (32-bit) in older Pillow releases (10.0)
    assert Image.open(sixteen_bit).mode in ("I;16", "I") and Image.open(floating).mode == "F"
    expected = load_image(eight_bit)
    assert np.array_equal(load_image(sixteen_bit), expected)  # not white
    assert np.array_equal(load_image(floating), expected)  # not black
    results = json.loads(invoke("predict", str(sixteen_bit), str(eight_bit), "--json", *fast()).stdout)
    assert results[0]["top"] == results[1]["top"]


def test_a_large_image_is_classified_without_warnings(trained: Path, tmp_path: Path) -> None:
    large = tmp_path / "large.png"  # 9500 x 9500: above Pillow's warning size, below its refusal
    Image.new("L", (9500, 9500), 90).save(large, compress_level=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke("predict", str(large), *fast())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{large}: ") and result.stderr == ""
    assert [warning.category.__name__ for warning in caught] == []


def test_train_refuses_damaged_or_mismatched_data_before_writing(trained: Path) -> None:
    for output in ("metrics/train.json", "metrics/train_log.tsv"):
        (trained / output).unlink()
    weights = (trained / "models/model.safetensors").read_bytes()
    params = (trained / "params.yaml").read_text()
    result = invoke("train", *fast(), "-S", "preprocess.val_size=0")  # a key an earlier stage sets
    assert_one_line_error(
        result,
        2,
        "-S preprocess.val_size=0: `cifar10 train` only checks preprocess.val_size (params.yaml has 20); "
        "it is set by `cifar10 preprocess -S preprocess.val_size=...` or in params.yaml",
    )
    assert (trained / "params.yaml").read_text() == params
    set_params(trained / "params.yaml", ["preprocess.val_size=0"])  # edited by hand
    assert_one_line_error(
        invoke("train"),
        1,
        "data/prepared was made with preprocess.val_size=20 (params say 0); run `cifar10 preprocess`",
    )
    set_params(trained / "params.yaml", ["preprocess.val_size=20"])
    for stage, split in (("train", "train"), ("evaluate", "test")):
        path = trained / f"data/prepared/{split}.safetensors"
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)  # the header still parses
        path.write_bytes(bytes(damaged))
        message = f"data/prepared/{split}.safetensors: contents differ from the SHA-256 in meta.json"
        assert_one_line_error(invoke(stage, *fast()), 1, message)
    assert list((trained / "metrics").iterdir()) == []
    assert (trained / "models/model.safetensors").read_bytes() == weights
    assert list((trained / "checkpoints").iterdir()) == []


def test_evaluate_out_of_memory_names_the_batch_size(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.evaluation as evaluation

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(evaluation, "evaluate", out_of_memory)
    result = invoke("evaluate", *fast())
    assert_one_line_error(
        result, 1, "out of memory on cpu with evaluate.batch_size=50; lower evaluate.batch_size"
    )
    assert no_test_figures(trained)


def test_plots_draws_three_pictures(trained: Path) -> None:
    assert invoke("evaluate", *fast()).exit_code == 0
    result = invoke("plots", *fast())
    assert result.exit_code == 0, result.output
    for name in ("learning_curves", "confusion_matrix", "confident_mistakes"):
        with Image.open(trained / "plots" / f"{name}.png") as picture:
            assert picture.format == "PNG" and picture.width >= 600, name


def test_a_plot_that_cannot_be_drawn_is_one_line_and_loses_nothing(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    assert invoke("evaluate", *fast()).exit_code == 0
    before = {path: path.read_bytes() for path in (trained / "metrics").iterdir()}
    weights = (trained / "models/model.safetensors").read_bytes()

    def no_font(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to find font DejaVu Sans")

    monkeypatch.setattr(Figure, "savefig", no_font)
    result = invoke("plots", *fast())
    assert_one_line_error(
        result, 1, "cannot draw plots/learning_curves.png: RuntimeError: Failed to find font DejaVu Sans"
    )
    assert {path: path.read_bytes() for path in (trained / "metrics").iterdir()} == before
    assert (trained / "models/model.safetensors").read_bytes() == weights
    assert not (trained / "plots").exists()


def test_a_second_train_in_the_same_workspace_is_refused_at_once(trained: Path) -> None:
    from pipeline.lock import exclusive

    weights = (trained / "models/model.safetensors").read_bytes()
    with exclusive(trained / ".cifar10" / "train.lock", "a running `cifar10 train`"):
        result = invoke("train", *fast(), "-S", "train.seed=1")
        assert_one_line_error(result, 1, "`cifar10 train` is already running in this workspace (pid ")
        assert invoke("evaluate", *fast()).exit_code == 0  # another stage's lock
    assert (trained / "models/model.safetensors").read_bytes() == weights


def test_evaluate_plots_and_predict_refuse_a_model_of_other_params(trained: Path, tmp_path: Path) -> None:
    for command in ("evaluate", "plots"):  # they only check the model's params: their -S cannot set them
        result = invoke(command, "-S", "train.seed=7")
        assert_one_line_error(result, 2, f"-S train.seed=7: `cifar10 {command}` only checks train.seed")
        assert "it is set by `cifar10 train -S train.seed=...`" in result.stderr
    set_params(trained / "params.yaml", ["train.seed=7"])  # edited by hand: the model is of seed 0
    for command in ("evaluate", "plots"):
        result = invoke(command)
        assert_one_line_error(result, 1, "models/model.safetensors was trained with other params")
        assert "train.seed=0 in the model, 7 in params.yaml" in result.stderr
        assert "train it for these params: `dvc repro` (or `cifar10 train`)" in result.stderr
    set_params(trained / "params.yaml", ["train.seed=0"])
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    # predict writes no output DVC tracks: its -S is for this command alone, and checked the same way
    result = invoke("predict", str(picture), "-S", "model.width=8")
    assert_one_line_error(result, 1, "model.width=4 in the model, 8 in params.yaml with -S")
    assert no_test_figures(trained) and not (trained / "plots").exists()
    moved = tmp_path / "elsewhere.safetensors"  # a model named on the command line is the user's choice
    shutil.copy(trained / "models/model.safetensors", moved)
    assert invoke("predict", str(picture), "--model", str(moved), "-S", "model.width=8").exit_code == 0
    assert "width: 4" in (trained / "params.yaml").read_text()


def test_under_dvc_a_wrong_model_names_the_way_out(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model DVC restored from a run-cache entry recorded while params.yaml changed (tests/
    test_dvc.py shows that the command named works)."""
    set_params(trained / "params.yaml", ["train.seed=7"])
    monkeypatch.setenv("DVC_STAGE", "evaluate")
    result = invoke("evaluate")
    assert_one_line_error(result, 1, "train.seed=0 in the model, 7 in params.yaml")
    assert "`dvc repro --force --downstream train` trains the model for these params" in result.stderr


def test_a_non_finite_loss_leaves_the_last_outputs(trained: Path) -> None:
    names = ("models/model.safetensors", "metrics/train.json", "metrics/train_log.tsv")
    outputs = [trained / name for name in names]
    before = [path.read_bytes() for path in outputs]
    set_params(trained / "params.yaml", ["train.lr=1e30", "train.momentum=0.99"])  # edited by hand
    assert_one_line_error(invoke("train"), 1, "NaN or infinite")
    assert [path.read_bytes() for path in outputs] == before


def test_a_non_finite_model_is_refused_by_evaluate_and_predict(trained: Path, tmp_path: Path) -> None:
    from pipeline.weights import read_safetensors

    weights = trained / "models/model.safetensors"
    tensors, metadata = read_safetensors(weights, "model file")
    broken = {
        name: tensor.float().fill_(float("nan")) if name.endswith("weight") else tensor
        for name, tensor in tensors.items()
    }
    from safetensors.torch import save_file

    save_file(broken, str(weights), metadata=metadata)
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    for command in (["evaluate"], ["predict", str(picture)], ["predict", str(picture), "--json"]):
        result = invoke(*command)
        assert_one_line_error(result, 1, "models/model.safetensors: the model gives non-finite logits")
        assert result.stdout == ""
    assert no_test_figures(trained)


def stop_the_first_epoch_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT at the first step boundary of the next training, as Ctrl-C does."""
    import pipeline.training as training

    original = training.train_one_epoch

    def stop_at_once(*args: object, **kwargs: object) -> object:
        import signal

        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "train_one_epoch", stop_at_once)


def edit_params_after_training(monkeypatch: pytest.MonkeyPatch, path: Path, old: str, new: str) -> None:
    """The next training's params file is edited as it ends, as a second `dvc exp run -S` does."""
    import pipeline.training as training

    original = training.train

    def train_while_someone_edits_params(*args: object, **kwargs: object) -> object:
        outcome = original(*args, **kwargs)  # type: ignore[arg-type]
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
        return outcome

    monkeypatch.setattr(training, "train", train_while_someone_edits_params)


def test_train_writes_no_model_when_params_change_while_it_runs_and_resumes_at_its_end(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.weights import read_safetensors

    weights = trained / "models/model.safetensors"
    assert invoke("train", "--restart").exit_code == 0  # the weights of these params, at this thread count
    expected, _ = read_safetensors(weights, "model file")
    weights.unlink()
    with monkeypatch.context() as patch:
        edit_params_after_training(
            patch, trained / "params.yaml", "seed: 0               # seeds", "seed: 8  # seeds"
        )
        result = invoke("train")
    assert_one_line_error(
        result, 1, "params.yaml changed while `cifar10 train` ran (train.seed); nothing was"
    )
    assert "`dvc exp run --queue` or `--temp`" in result.stderr
    assert not weights.exists()
    # the final state was kept: with the params it was trained for, the run ends without training again
    (trained / "params.yaml").write_text(
        (trained / "params.yaml").read_text().replace("  seed: 8 ", "  seed: 0 ")
    )
    with monkeypatch.context() as patch:
        patch.setattr("pipeline.training.train_one_epoch", None)  # no epoch may run
        resumed = invoke("train")
    assert resumed.exit_code == 0, resumed.output
    assert "after its last epoch: writing the outputs" in resumed.stderr
    written, _ = read_safetensors(weights, "model file")
    assert written.keys() == expected.keys() and all(
        torch.equal(written[name], expected[name]) for name in expected
    )
    assert list((trained / "checkpoints").iterdir()) == []


def test_evaluate_writes_nothing_when_its_params_change_while_it_runs(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.evaluation as evaluation

    original = evaluation.evaluate

    def evaluate_while_someone_edits_params(*args: object, **kwargs: object) -> object:
        text = (trained / "params.yaml").read_text()
        (trained / "params.yaml").write_text(text.replace("  tta: true ", "  tta: false "))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluation, "evaluate", evaluate_while_someone_edits_params)
    result = invoke("evaluate")
    assert_one_line_error(result, 1, "params.yaml changed while `cifar10 evaluate` ran (evaluate.tta)")
    assert no_test_figures(trained)


def test_a_run_time_only_key_edited_during_training_changes_nothing(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_params_after_training(
        monkeypatch, trained / "params.yaml", "  checkpoint_every: 1 ", "  checkpoint_every: 3 "
    )
    result = invoke("train", "-S", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert json.loads((trained / "metrics/train.json").read_text())["epoch"] == 1


def test_a_stages_overrides_go_into_params_yaml_as_dvc_exp_run_writes_them(trained: Path) -> None:
    assert invoke("evaluate").exit_code == 0 and invoke("plots").exit_code == 0
    before = (trained / "params.yaml").read_text()
    result = invoke(
        "train", "-S", "train.seed=21", "-S", "train.augment.flip=alternate", "-S", "evaluate.tta=false"
    )
    assert result.exit_code == 0, result.output
    after = (trained / "params.yaml").read_text()
    changed = [
        (old, new) for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new
    ]
    assert [new.split("#")[0].split() for _, new in changed] == [["seed:", "21"], ["flip:", "alternate"]]
    assert all(old.split("#")[1] == new.split("#")[1] for old, new in changed)  # comments kept
    lines = [line for line in result.stderr.splitlines() if "as `dvc exp run -S` does" in line]
    assert len(lines) == 1 and 'train.seed=21 train.augment.flip="alternate"' in lines[0]
    assert "-S evaluate.tta: not read by `cifar10 train`; params.yaml keeps its value" in result.stderr
    # the test metrics and pictures of the seed-0 model are gone: DVC cannot record them with seed 21
    assert no_test_figures(trained) and not (trained / "plots/confusion_matrix.png").exists()
    assert invoke("evaluate").exit_code == 0  # the model is that of params.yaml, no -S needed
    # a run-time-only value is written too, and makes nothing stale
    archive = trained / "data/raw/cifar-10-binary.tar.gz"
    moved = trained / "mirror.tar.gz"
    shutil.copy(archive, moved)
    result = invoke("download", "-S", f"data.url={moved}")
    assert result.exit_code == 0, result.output
    assert f"url: {moved}" in (trained / "params.yaml").read_text()
    assert not no_test_figures(trained) and "removed" not in result.stderr
    assert "WARNING" not in result.stderr and "warning" not in result.stderr.lower()


def test_a_training_shows_no_test_figures_beside_its_epochs(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp show` reads a running training's files: the last model's eval.json beside the new
    epochs would be false. From the first epoch written on, the test figures are `{}` (for a missing
    file DVC would show the last recorded ones from its cache) and the rest of evaluate's and plots'
    outputs are gone, so `dvc commit` cannot record the `{}` either."""
    assert invoke("evaluate", *fast()).exit_code == 0 and invoke("plots", *fast()).exit_code == 0
    seen = []
    import stages.train

    original = stages.train.write_progress

    def watching(*args: object) -> None:
        original(*args)  # type: ignore[arg-type]
        epoch = json.loads((trained / "metrics/train.json").read_text())["epoch"]
        seen.append(
            (
                epoch,
                no_test_figures(trained),
                (trained / "plots").exists() and any((trained / "plots").iterdir()),
                (trained / "models/model.safetensors").exists(),
            )
        )

    monkeypatch.setattr(stages.train, "write_progress", watching)
    assert invoke("train", *fast(), "--restart").exit_code == 0
    # each epoch: no test figures, no pictures, and no model until the run's own is written
    assert seen == [(1, True, False, False), (2, True, False, False)]
    assert json.loads((trained / "metrics/eval.json").read_text()) == {}


def test_a_run_whose_own_outputs_are_gone_removes_the_later_ones_before_it_can_fail(trained: Path) -> None:
    """DVC removes a stage's outputs before it runs it (`dvc repro --force`): a training that is
    then refused must not leave the old model's test figures and pictures beside no model."""
    assert invoke("evaluate", *fast()).exit_code == 0 and invoke("plots", *fast()).exit_code == 0
    (trained / "models/model.safetensors").unlink()
    set_params(trained / "params.yaml", ["preprocess.val_size=0"])  # data of other params: refused
    assert invoke("train").exit_code == 1
    assert not (trained / "reports/eval.json").exists() and not (trained / "metrics/confusion.csv").exists()
    assert list((trained / "plots").iterdir()) == []
    assert json.loads((trained / "metrics/eval.json").read_text()) == {}
    assert (trained / "metrics/train.json").exists()  # a stage's own outputs are DVC's to remove


def test_predict_outside_a_repository_uses_the_shipped_settings(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.params import SHIPPED_EVALUATE, load_params

    assert load_params(REPO / "params.yaml").evaluate.model_dump() == SHIPPED_EVALUATE
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(trained / "models/model.safetensors", elsewhere / "model.safetensors")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(elsewhere / "a.png")
    monkeypatch.chdir(elsewhere)
    result = invoke("predict", "--model", "model.safetensors", "a.png", "-S", "evaluate.device=cpu")
    assert_one_line_error(result, 2, "params.yaml: params file not found")  # -S needs a params file
    result = invoke("predict", "--model", "model.safetensors", "a.png")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("a.png: ")


def test_predict_follows_evaluate_tta(trained: Path, tmp_path: Path) -> None:
    picture = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(picture)
    outputs = {}
    for tta in ("false", "true"):
        result = invoke("predict", str(picture), "--json", *fast(), "-S", f"evaluate.tta={tta}")
        assert result.exit_code == 0, result.output
        outputs[tta] = json.loads(result.stdout)[0]["top"][0]["probability"]
    assert outputs["false"] != outputs["true"]


def test_sync_bn_on_the_cpu_is_a_params_error_before_any_worker(project: Path) -> None:
    result = invoke("train", "-S", "train.device=cpu", "-S", "train.sync_bn=true", "-S", "train.nproc=2")
    assert_one_line_error(result, 2, "train.sync_bn: PyTorch's SyncBatchNorm works on CUDA devices only")
    assert "worker" not in result.output


def test_checkpoints_command_lists_and_removes(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = trained / "shared-checkpoints"
    monkeypatch.setenv("CIFAR10_CHECKPOINTS", str(folder))
    for seed in (1, 2):  # two interrupted runs
        with monkeypatch.context() as patch:
            stop_the_first_epoch_at_once(patch)
            result = invoke("train", "-S", f"train.seed={seed}")
            assert result.exit_code == 130, result.output
            assert f"checkpoint saved to {folder}" in result.stderr
    listing = invoke("checkpoints")
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(f"{folder}: 2 checkpoint(s), ") and "CIFAR10_CHECKPOINTS_MAX_GB" in lines[0]
    assert " kB (keeps" in lines[0] and " kB  " in lines[1]  # width-4 networks: not "0.00 GB"
    assert "train.seed=2" in lines[1] and "train.seed=1" in lines[2] and "at epoch 1, step 1" in lines[1]
    assert "(this checkout's)" in lines[1] and "(this checkout's)" in lines[2]
    second, first = lines[1].split()[0], lines[2].split()[0]
    assert invoke("checkpoints", "--remove", first).exit_code == 0  # the run id as listed
    assert sorted(path.name for path in folder.iterdir()) == [f"{second}.safetensors"]
    assert_one_line_error(invoke("checkpoints", "--remove", "nothing"), 1, "no checkpoint nothing")
    assert invoke("checkpoints", "--remove", f"{folder}/{second}.safetensors").exit_code == 0  # or its file
    assert list(folder.iterdir()) == []
    none = invoke("checkpoints", "--all")
    assert none.exit_code == 0 and none.stdout == f"{folder}: no checkpoints to remove\n"


def test_torch_lines_that_are_not_problems_are_not_shown() -> None:
    """In a process of its own, as a user's command: some torch releases attach a handler of their
    own to their loggers, which writes to the stderr of the moment it was made, where pytest's
    capture would not see it."""
    script = (
        "import logging\n"
        "import torch\n"
        "from stages.common import configure_logging\n"
        "configure_logging()\n"
        "dynamo = logging.getLogger('torch._dynamo.variables.ctx_manager')\n"
        "dynamo.warning('Profiler record function %s will be ignored', \"<class 'record_function'>\")\n"
        "other = logging.getLogger('torch._dynamo.variables.torch')\n"
        "other.warning('Profiler function %s will be ignored', 'x')\n"
        "dynamo.warning('a real problem')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Profiler" not in result.stderr and "a real problem" in result.stderr, result.stderr


def test_cifar10_runs_the_code_of_the_checkout_it_is_run_in(tmp_path: Path) -> None:
    """`cifar10` is installed from one checkout (`pip install -e .`); run in another, it runs that
    one's code, as `python -m stages` (what dvc.yaml runs) does there."""
    command = Path(sys.executable).parent / "cifar10"
    assert command.is_file(), "README's install (pip install -e .) puts the cifar10 command beside python"
    checkout = tmp_path / "other-checkout"
    for package in ("pipeline", "stages"):
        shutil.copytree(REPO / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    edited = checkout / "stages" / "checkpoints.py"
    anchor = "    with user_errors():\n        configure_logging()\n"
    assert anchor in edited.read_text()
    edited.write_text(
        edited.read_text().replace(anchor, '    typer.echo("the other checkout\'s code")\n' + anchor)
    )
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    for arguments in ([str(command)], [sys.executable, "-m", "stages"]):
        result = subprocess.run(
            [*arguments, "checkpoints"], cwd=checkout, env=environment, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("the other checkout's code\n"), (arguments, result.stdout)
    elsewhere = subprocess.run([str(command), "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert elsewhere.returncode == 0 and elsewhere.stdout.startswith("cifar10 ")


def test_a_checkout_whose_code_does_not_load_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stages.cli import CHECKOUT_VARIABLE, run_this_checkouts_code

    for package in ("pipeline", "stages"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_code:  # started for this checkout, and still not its code
        run_this_checkouts_code(["train"], {CHECKOUT_VARIABLE: str(tmp_path)})
    assert exit_code.value.code == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path} is a checkout of cifar10, but its code does not load here; run `python -m "
        "stages` with its arguments instead\n"
    )
    monkeypatch.chdir(REPO)  # the checkout this code is from: nothing to do
    run_this_checkouts_code(["train"], {})


def test_a_command_run_below_the_repository_root_names_the_root(project: Path) -> None:
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "data").mkdir()
    os.chdir(project / "data")
    assert_one_line_error(
        invoke("train"),
        2,
        f"params.yaml: params file not found here; run the command from the repository root, {project}, "
        "where dvc.yaml is",
    )


def test_version_and_readable_help() -> None:
    version = invoke("--version")
    assert version.exit_code == 0 and version.stdout.startswith("cifar10 ")
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "Usage: cifar10 predict [OPTIONS] IMAGE..." in result.stdout
    for typer_label in ("<bool>", "<list[Path]>", "{images}", "<path>"):
        assert typer_label not in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    # a paragraph is reflowed to the width, not broken where the source line ends
    assert "an unreadable one gets an error line, the\n  others" in result.stdout


def test_predict_without_a_model_names_the_command_that_makes_one(project: Path, tmp_path: Path) -> None:
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    assert_one_line_error(
        invoke("predict", str(picture)),
        1,
        "models/model.safetensors: no trained model here; make one with `dvc repro` (or `cifar10 train`), "
        "or name one with --model",
    )
