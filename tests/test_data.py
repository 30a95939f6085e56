from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import pipeline.data as data_module
from pipeline.data import load_meta, load_split, preprocess, read_archive, stratified_indices
from pipeline.errors import ArchiveError, PipelineError
from pipeline.params import PreprocessParams
from tests.conftest import CLASSES, RECORDS, TinyArchive, official_members, records, write_archive


def prepared_split(folder: Path, name: str) -> dict[str, np.ndarray]:
    return load_file(str(folder / f"{name}.safetensors"))


def test_pixels_and_labels_match_the_records_byte_for_byte(tiny_archive: TinyArchive, tmp_path: Path) -> None:
    output = tmp_path / "prepared"
    meta = preprocess(tiny_archive.path, PreprocessParams(val_size=0, seed=0), output)
    train, test = prepared_split(output, "train"), prepared_split(output, "test")
    assert train["images"].dtype == np.uint8 and train["images"].shape == (5 * RECORDS, 3, 32, 32)
    assert train["labels"].dtype == np.int64 and train["labels"].shape == (5 * RECORDS,)
    assert np.array_equal(
        train["images"].reshape(len(train["images"]), -1), tiny_archive.train_records[:, 1:]
    )
    assert np.array_equal(train["labels"], tiny_archive.train_records[:, 0])
    assert np.array_equal(test["images"].reshape(RECORDS, -1), tiny_archive.test_records[:, 1:])
    # planar order: the first 1024 bytes after the label are the red plane, rows top to bottom
    assert train["images"][3, 0, 1, 0] == tiny_archive.train_records[3, 1 + 32]
    assert train["images"][3, 2, 0, 5] == tiny_archive.train_records[3, 1 + 2048 + 5]
    assert not (output / "val.safetensors").exists()
    assert meta["classes"] == CLASSES
    assert meta["counts"] == {"train": 100, "test": 20}
    assert meta["source_sha256"] == tiny_archive.sha256
    pixels = tiny_archive.train_records[:, 1:].reshape(-1, 3, 1024).astype(np.float64) / 255
    assert meta["mean"] == pytest.approx(pixels.mean(axis=(0, 2)).tolist(), abs=1e-12)
    assert meta["std"] == pytest.approx(pixels.std(axis=(0, 2)).tolist(), abs=1e-12)
    assert json.loads((output / "meta.json").read_text()) == meta


def test_validation_split_is_stratified_deterministic_and_disjoint(
    tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    first, second, other_seed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    preprocess(tiny_archive.path, PreprocessParams(val_size=30, seed=7), first)
    preprocess(tiny_archive.path, PreprocessParams(val_size=30, seed=7), second)
    preprocess(tiny_archive.path, PreprocessParams(val_size=30, seed=8), other_seed)
    val, train = prepared_split(first, "val"), prepared_split(first, "train")
    assert np.bincount(val["labels"], minlength=10).tolist() == [3] * 10
    assert len(train["labels"]) == 70
    for name in ("train", "val"):
        assert np.array_equal(prepared_split(first, name)["images"], prepared_split(second, name)["images"])
    assert not np.array_equal(val["images"], prepared_split(other_seed, "val")["images"])
    # train keeps the archive order minus the validation images; together they are the whole archive
    all_rows = {row.tobytes() for row in tiny_archive.train_records[:, 1:]}
    train_rows = [row.tobytes() for row in train["images"].reshape(70, -1)]
    val_rows = {row.tobytes() for row in val["images"].reshape(30, -1)}
    assert set(train_rows) | val_rows == all_rows and not set(train_rows) & val_rows
    order = [
        next(i for i, r in enumerate(tiny_archive.train_records[:, 1:]) if r.tobytes() == row)
        for row in train_rows
    ]
    assert order == sorted(order)


def test_stratified_indices_follow_class_shares() -> None:
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    chosen = stratified_indices(labels, 10, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [6, 3, 1]
    assert len(set(chosen.tolist())) == 10


def test_val_size_too_large_is_an_error(tiny_archive: TinyArchive, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as raised:
        preprocess(tiny_archive.path, PreprocessParams(val_size=100, seed=0), tmp_path / "prepared")
    assert str(raised.value) == (
        "preprocess.val_size: 100 leaves no training images (the archive has 100); the largest that "
        "works is 99, and a tenth (10) is usual"
    )
    assert not (tmp_path / "prepared").exists()
    largest = preprocess(tiny_archive.path, PreprocessParams(val_size=99, seed=0), tmp_path / "prepared")
    assert largest["counts"] == {"train": 1, "test": 20, "val": 99}


def bad_archive(tmp_path: Path, case: str) -> Path:
    train, test = records(5 * RECORDS, 1), records(RECORDS, 2)
    members = official_members(train, test)
    extra = None
    if case == "missing member":
        del members["cifar-10-batches-bin/data_batch_3.bin"]
    elif case == "parent path":
        members["../x"] = b"escape"
    elif case == "absolute path":
        members["/etc/evil"] = b"escape"
    elif case == "extra member":
        members["cifar-10-batches-bin/data_batch_6.bin"] = train[:5].tobytes()
    elif case == "record size":
        members["cifar-10-batches-bin/data_batch_2.bin"] += b"\x00"
    elif case == "label 10":
        bad = test.copy()
        bad[4, 0] = 10
        members["cifar-10-batches-bin/test_batch.bin"] = bad.tobytes()
    elif case in ("symlink", "hardlink", "device"):
        member = "cifar-10-batches-bin/data_batch_1.bin"
        del members[member]

        def add_special(tar: tarfile.TarFile) -> None:
            info = tarfile.TarInfo(member)
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[
                case
            ]
            info.linkname = "/etc/passwd"
            tar.addfile(info)

        extra = add_special
    path = tmp_path / "bad.tar.gz"
    write_archive(path, members, extra)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing member", "missing member cifar-10-batches-bin/data_batch_3.bin"),
        ("parent path", "unexpected member '../x'"),
        ("absolute path", "unexpected member '/etc/evil'"),
        ("extra member", "unexpected member 'cifar-10-batches-bin/data_batch_6.bin'"),
        ("record size", "data_batch_2.bin: 61461 bytes is not a whole number of 3073-byte records"),
        ("label 10", "test_batch.bin: record 4 has label 10"),
        ("symlink", "is not a regular file"),
        ("hardlink", "is not a regular file"),
        ("device", "is not a regular file"),
    ],
)
def test_rejected_archives_name_the_problem_and_leave_prepared_alone(
    tmp_path: Path, case: str, message: str
) -> None:
    output = tmp_path / "prepared"
    output.mkdir()
    (output / "meta.json").write_text("earlier run")
    with pytest.raises(ArchiveError) as caught:
        preprocess(bad_archive(tmp_path, case), PreprocessParams(val_size=0, seed=0), output)
    assert message in str(caught.value)
    assert sorted(p.name for p in output.iterdir()) == ["meta.json"]
    assert (output / "meta.json").read_text() == "earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "prepared"]


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.999])
def test_truncated_gzip_is_rejected(tiny_archive: TinyArchive, tmp_path: Path, cut: float) -> None:
    whole = tiny_archive.path.read_bytes()
    path = tmp_path / "truncated.tar.gz"
    path.write_bytes(whole[: int(len(whole) * cut)])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        read_archive(path)


def test_not_gzip_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "plain.tar.gz"
    path.write_bytes(b"this is not an archive" * 100)
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        read_archive(path)


def test_official_hash_requires_official_record_counts(
    tiny_archive: TinyArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "KNOWN_RECORD_COUNTS", {tiny_archive.sha256: 10_000})
    with pytest.raises(ArchiveError, match="20 records, the official archive has 10000"):
        read_archive(tiny_archive.path)


def test_archive_is_never_extracted(
    tiny_archive: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("extraction to disk")

    monkeypatch.setattr(tarfile.TarFile, "extract", forbidden)
    monkeypatch.setattr(tarfile.TarFile, "extractall", forbidden)
    monkeypatch.chdir(tmp_path)
    archive = read_archive(tiny_archive.path)
    assert len(archive.train) == 100 and len(archive.test) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]


def test_directory_entry_and_readme_are_accepted(tmp_path: Path) -> None:
    train, test = records(5 * RECORDS, 1), records(RECORDS, 2)

    def add_folder(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("cifar-10-batches-bin")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)

    path = tmp_path / "a.tar.gz"
    write_archive(path, official_members(train, test), add_folder)
    assert read_archive(path).class_names == tuple(CLASSES)


def test_gzip_stream_is_read_to_its_end(tiny_archive: TinyArchive, tmp_path: Path) -> None:
    """Trailing garbage after the gzip member is caught by reading the stream to its end."""
    path = tmp_path / "trailing.tar.gz"
    path.write_bytes(tiny_archive.path.read_bytes() + gzip.compress(b"x")[:5])
    with pytest.raises(ArchiveError):
        read_archive(path)


@pytest.mark.parametrize("edition", ["cifar-10-batches-py", "cifar-10-batches-mat"])
def test_other_editions_of_cifar10_are_named(tmp_path: Path, edition: str) -> None:
    path = tmp_path / "other.tar.gz"
    write_archive(path, {f"{edition}/data_batch_1": b"\x80\x04pickle-or-matlab"})
    with pytest.raises(ArchiveError, match=r"edition of CIFAR-10 .*the pipeline reads the binary edition"):
        read_archive(path)


def test_meta_records_each_split_hash_and_loading_verifies_it(
    tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    output = tmp_path / "prepared"
    meta = preprocess(tiny_archive.path, PreprocessParams(val_size=10, seed=0), output)
    assert sorted(meta["sha256"]) == ["test", "train", "val"]
    for name in ("train", "val", "test"):
        assert (
            meta["sha256"][name] == hashlib.sha256((output / f"{name}.safetensors").read_bytes()).hexdigest()
        )
    assert load_split(output, "train", load_meta(output)) is not None

    damaged = bytearray((output / "train.safetensors").read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(64)  # a disk or copy fault: the header still parses
    (output / "train.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(PipelineError) as caught:
        load_split(output, "train", load_meta(output))
    message = str(caught.value)
    assert f"{output / 'train.safetensors'}: contents differ from the SHA-256 in meta.json" in message
    assert message.endswith("run `cifar10 preprocess` again")
    assert load_split(output, "test", load_meta(output)) is not None  # the other splits still load


def test_prepared_data_from_other_preprocess_params_is_refused(
    tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    output = tmp_path / "prepared"
    preprocess(tiny_archive.path, PreprocessParams(val_size=10, seed=0), output)
    assert load_meta(output, PreprocessParams(val_size=10, seed=0))["val_size"] == 10
    with pytest.raises(PipelineError) as caught:
        load_meta(output, PreprocessParams(val_size=0, seed=0))
    assert str(caught.value) == (
        f"{output} was made with preprocess.val_size=10 (params say 0); run `cifar10 preprocess` again"
    )
    (output / "meta.json").write_text(json.dumps({"classes": CLASSES}))  # written by an older version
    with pytest.raises(PipelineError, match="no checksums"):
        load_meta(output)
