"""Each command through typer's CliRunner: options, outputs, and one-line errors with the right exit code."""

from __future__ import annotations

import json
import shutil
import struct
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
    assert Image.open(sixteen_bit).mode == "I;16" and Image.open(floating).mode == "F"
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
    result = invoke("train", *fast(), "-S", "preprocess.val_size=0")
    assert_one_line_error(
        result,
        1,
        "data/prepared was made with preprocess.val_size=20 (params say 0); run `cifar10 preprocess`",
    )
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
    assert not (trained / "metrics/eval.json").exists()


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
    for command in ("evaluate", "plots"):
        result = invoke(command, *fast(), "-S", "train.seed=7")
        assert_one_line_error(result, 1, "models/model.safetensors was trained with other params")
        assert "train.seed=0 in the model, 7 in params.yaml with -S" in result.stderr
        assert "dvc repro" in result.stderr
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    assert_one_line_error(invoke("predict", str(picture), *fast(), "-S", "model.width=8"), 1, "model.width=4")
    assert not (trained / "metrics/eval.json").exists() and not (trained / "plots").exists()
    moved = tmp_path / "elsewhere.safetensors"  # a model named on the command line is the user's choice
    shutil.copy(trained / "models/model.safetensors", moved)
    assert (
        invoke("predict", str(picture), "--model", str(moved), *fast(), "-S", "model.width=8").exit_code == 0
    )


def test_a_non_finite_loss_leaves_the_last_good_outputs(trained: Path) -> None:
    names = ("models/model.safetensors", "metrics/train.json", "metrics/train_log.tsv")
    outputs = [trained / name for name in names]
    before = [path.read_bytes() for path in outputs]
    result = invoke("train", *fast(), "-S", "train.lr=1e30", "-S", "train.momentum=0.99")
    assert_one_line_error(result, 1, "NaN or infinite")
    assert [path.read_bytes() for path in outputs] == before


def test_train_writes_no_model_when_params_change_while_it_runs(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.training as training

    (trained / "models/model.safetensors").unlink()
    original = training.train

    def train_while_someone_edits_params(*args: object, **kwargs: object) -> object:
        outcome = original(*args, **kwargs)  # type: ignore[arg-type]
        text = (
            (trained / "params.yaml")
            .read_text()
            .replace("  seed: 0               # seeds", "  seed: 8  # seeds")
        )
        (trained / "params.yaml").write_text(text)  # as a second `dvc exp run -S train.seed=8` does
        return outcome

    monkeypatch.setattr(training, "train", train_while_someone_edits_params)
    result = invoke("train", *fast())
    assert_one_line_error(result, 1, "params.yaml changed while training (train.seed)")
    assert not (trained / "models/model.safetensors").exists()


def test_an_override_dvc_does_not_know_is_said_once_at_the_end(trained: Path) -> None:
    (trained / "dvc.yaml").write_text("stages: {}\n")  # inside a DVC project
    result = invoke("evaluate", *fast())
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "DVC records" in line]
    assert len(warnings) == 1 and "train.epochs" in warnings[0] and "model.width" in warnings[0]
    assert "-S model.width=4" in warnings[0] and "keeps the record right" in warnings[0]
    assert result.stderr.rstrip().endswith(warnings[0].strip())  # at the end, after the result
    set_params(trained / "params.yaml", FAST_TRAINING)
    agreeing = invoke("evaluate", *fast())  # the same -S, now what params.yaml says: nothing to say
    assert agreeing.exit_code == 0 and "DVC records" not in agreeing.stderr


def test_under_dvc_training_drops_the_last_models_test_metrics(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVC shows a running experiment's files: the old eval.json beside new epochs would be false."""
    assert invoke("evaluate", *fast()).exit_code == 0
    seen = []
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.setenv("DVC_ROOT", str(trained))
    import stages.train

    original = stages.train.write_progress

    def watching(*args: object) -> None:
        seen.append((trained / "metrics/eval.json").exists())
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stages.train, "write_progress", watching)
    assert invoke("train", *fast(), "--restart").exit_code == 0
    assert seen == [False, False]


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
    import pipeline.training as training

    # two interrupted runs: SIGINT at the first step boundary of each
    for seed in (1, 2):
        with monkeypatch.context() as patch:
            original = training.train_one_epoch

            def stop_at_once(*args: object, **kwargs: object) -> object:
                import signal

                signal.raise_signal(signal.SIGINT)
                return original(*args, **kwargs)  # type: ignore[arg-type]  # noqa: B023

            patch.setattr(training, "train_one_epoch", stop_at_once)
            result = invoke("train", *fast(), "-S", f"train.seed={seed}")
            assert result.exit_code == 130, result.output
            assert f"checkpoint saved to {folder}" in result.stderr
    listing = invoke("checkpoints")
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(f"{folder}: 2 checkpoint(s)") and "CIFAR10_CHECKPOINTS_MAX_GB" in lines[0]
    assert "train.seed=2" in lines[1] and "train.seed=1" in lines[2] and "at epoch 1, step 1" in lines[1]
    first = lines[2].split()[0]
    assert invoke("checkpoints", "--remove", first).exit_code == 0
    assert sorted(path.name for path in folder.iterdir()) == [lines[1].split()[0]]
    assert_one_line_error(
        invoke("checkpoints", "--remove", "nothing.safetensors"), 1, "no checkpoint nothing"
    )
    assert invoke("checkpoints", "--all").exit_code == 0 and list(folder.iterdir()) == []


def test_torch_lines_that_are_not_problems_are_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from stages.common import configure_logging

    configure_logging()
    dynamo = logging.getLogger("torch._dynamo.variables.ctx_manager")
    dynamo.warning("Profiler record function %s will be ignored", "<class 'record_function'>")
    logging.getLogger("torch._dynamo.variables.torch").warning("Profiler function %s will be ignored", "x")
    dynamo.warning("a real problem")
    _, errors = capsys.readouterr()
    assert "Profiler" not in errors and "a real problem" in errors
