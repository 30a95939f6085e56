"""CIFAR-10 data: read the official binary archive, split off validation images, save and load splits.

The archive is read straight from the gzip stream and never extracted, so no member path can
reach the file system. Each batch file is a sequence of 3073-byte records: one label byte
(0-9), then 1024 red, 1024 green and 1024 blue bytes, rows top to bottom. numpy parses them;
nothing here unpickles anything.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from pipeline.errors import ArchiveError, PipelineError
from pipeline.files import atomic_directory
from pipeline.params import PreprocessParams

logger = logging.getLogger(__name__)

CLASS_COUNT = 10
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
FOLDER = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"{FOLDER}/data_batch_{number}.bin" for number in range(1, 6))
TEST_MEMBER = f"{FOLDER}/test_batch.bin"
META_MEMBER = f"{FOLDER}/batches.meta.txt"
# The other editions on the same page: Python pickles and MATLAB files, which this pipeline never reads.
OTHER_EDITIONS = {"cifar-10-batches-py": "Python (pickle)", "cifar-10-batches-mat": "MATLAB"}
REQUIRED_MEMBERS = frozenset({*TRAIN_MEMBERS, TEST_MEMBER, META_MEMBER})
IGNORED_MEMBERS = frozenset({f"{FOLDER}/readme.html"})
# Records per batch file in archives whose hash we know: the official one (cs.toronto.edu).
KNOWN_RECORD_COUNTS = {"c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd": 10_000}
SPLIT_FILES = {"train": "train.safetensors", "val": "val.safetensors", "test": "test.safetensors"}
META_FILE = "meta.json"


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 3, 32, 32], channel planes in RGB order
    labels: np.ndarray  # int64 [N], 0-9

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Archive:
    train: Split
    test: Split
    class_names: tuple[str, ...]
    sha256: str


class _HashingReader:
    """A read-only file wrapper that hashes every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


def _parse_records(name: str, data: bytes) -> Split:
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise ArchiveError(f"{name}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte records")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= CLASS_COUNT:
        bad = int(np.argmax(labels >= CLASS_COUNT))
        raise ArchiveError(f"{name}: record {bad} has label {labels[bad]}, expected 0-{CLASS_COUNT - 1}")
    return Split(records[:, 1:].reshape(-1, *IMAGE_SHAPE).copy(), labels)


def _parse_class_names(data: bytes) -> tuple[str, ...]:
    try:
        names = tuple(line.strip() for line in data.decode("ascii").splitlines() if line.strip())
    except UnicodeDecodeError:
        raise ArchiveError(f"{META_MEMBER}: not ASCII text") from None
    if len(names) != CLASS_COUNT:
        raise ArchiveError(f"{META_MEMBER}: expected {CLASS_COUNT} class names, found {len(names)}")
    return names


def _read_members(reader: _HashingReader) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    gzip_stream = gzip.GzipFile(fileobj=reader, mode="rb")  # type: ignore[call-overload]
    with tarfile.open(fileobj=gzip_stream, mode="r|") as tar:  # "r|": a forward-only stream
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isdir() and name.rstrip("/") == FOLDER:
                continue
            if name in IGNORED_MEMBERS and member.isfile():
                continue
            edition = OTHER_EDITIONS.get(name.split("/")[0])
            if edition is not None:
                raise ArchiveError(
                    f"this is the {edition} edition of CIFAR-10 ({name.split('/')[0]}/); "
                    "the pipeline reads the binary edition, cifar-10-binary.tar.gz"
                )
            if name not in REQUIRED_MEMBERS:
                raise ArchiveError(f"unexpected member {member.name!r} in the archive")
            if not member.isfile():
                raise ArchiveError(f"member {member.name!r} is not a regular file (link or device)")
            if name in contents:
                raise ArchiveError(f"member {member.name!r} appears twice")
            handle = tar.extractfile(member)
            assert handle is not None  # regular files always have content
            contents[name] = handle.read()
    while gzip_stream.read(1 << 20):  # read to the end: checks the gzip CRC and length trailer
        pass
    return contents


def read_archive(path: Path) -> Archive:
    """Parse the official CIFAR-10 binary archive at `path`. Raises ArchiveError naming the problem."""
    if not path.is_file():
        raise PipelineError(f"{path}: archive not found (run `cifar10 download` first)")
    with path.open("rb") as raw:
        reader = _HashingReader(raw)
        try:
            contents = _read_members(reader)
        except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as error:
            raise ArchiveError(f"{path}: truncated or corrupt archive ({error})") from None
        sha256 = reader.drain()
    missing = sorted(REQUIRED_MEMBERS - contents.keys())
    if missing:
        raise ArchiveError(f"missing member{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    batches = [_parse_records(name, contents[name]) for name in TRAIN_MEMBERS]
    test = _parse_records(TEST_MEMBER, contents[TEST_MEMBER])
    expected = KNOWN_RECORD_COUNTS.get(sha256)
    if expected is not None:
        for name, split in zip((*TRAIN_MEMBERS, TEST_MEMBER), (*batches, test), strict=True):
            if len(split) != expected:
                raise ArchiveError(f"{name}: {len(split)} records, the official archive has {expected}")
    train = Split(
        np.concatenate([batch.images for batch in batches]),
        np.concatenate([batch.labels for batch in batches]),
    )
    return Archive(train, test, _parse_class_names(contents[META_MEMBER]), sha256)


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Pick `size` indices with each class's share as in `labels` (largest remainder), sorted.

    Deterministic for a given seed: the same labels and seed always give the same indices.
    """
    if size == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[: size - quotas.sum()]] += 1
    generator = np.random.default_rng(seed)
    chosen = [
        generator.choice(np.flatnonzero(labels == label), size=quota, replace=False)
        for label, quota in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def channel_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on a 0-1 scale, exact, from a histogram of the byte values."""
    values = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        histogram = np.bincount(images[:, channel].reshape(-1), minlength=256).astype(np.float64)
        total = histogram.sum()
        mean = float((histogram * values).sum() / total)
        variance = float((histogram * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(variance**0.5)
    return means, stds


@dataclass(frozen=True)
class Prepared:
    """The splits of data/prepared, encoded as safetensors files, and their meta.json."""

    files: dict[str, bytes]  # split name -> safetensors bytes
    meta: dict[str, Any]


def prepare(archive_path: Path, params: PreprocessParams) -> Prepared:
    """Read the archive and split off validation images, in memory: nothing is written."""
    archive = read_archive(archive_path)
    if params.val_size >= len(archive.train):
        available = len(archive.train)
        raise PipelineError(
            f"preprocess.val_size: {params.val_size} leaves no training images (the archive has "
            f"{available}); the largest that works is {available - 1}, and a tenth ({available // 10}) "
            "is usual"
        )
    val_indices = stratified_indices(archive.train.labels, params.val_size, params.seed)
    keep = np.ones(len(archive.train), dtype=bool)
    keep[val_indices] = False
    splits = {"train": archive.train.subset(np.flatnonzero(keep)), "test": archive.test}
    if params.val_size:
        splits["val"] = archive.train.subset(val_indices)
    mean, std = channel_statistics(splits["train"].images)
    encoded = {name: save({"images": split.images, "labels": split.labels}) for name, split in splits.items()}
    meta = {
        "classes": list(archive.class_names),
        "counts": {name: len(split) for name, split in splits.items()},
        "mean": mean,
        "std": std,
        "source_sha256": archive.sha256,
        "val_size": params.val_size,
        "seed": params.seed,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in encoded.items()},
    }
    return Prepared(encoded, meta)


def write_prepared(output: Path, prepared: Prepared) -> None:
    """Write the split files and meta.json to `output/`, replacing it atomically as a whole."""
    with atomic_directory(output) as folder:
        for name, data in prepared.files.items():
            (folder / SPLIT_FILES[name]).write_bytes(data)
        (folder / META_FILE).write_text(json.dumps(prepared.meta, indent=2, allow_nan=False) + "\n")


def preprocess(archive_path: Path, params: PreprocessParams, output: Path) -> dict[str, Any]:
    """Read the archive, split off validation images and write `output/` atomically; return the meta."""
    prepared = prepare(archive_path, params)
    write_prepared(output, prepared)
    return prepared.meta


def prepared_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of meta.json's content, which holds the SHA-256 of every split file: the identity
    of data/prepared, recorded in checkpoints, model cards and the test report."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def load_meta(prepared: Path, params: PreprocessParams | None = None) -> dict[str, Any]:
    """meta.json of `prepared`; with `params`, checked to be made with those preprocess params.

    A mismatch (data/prepared left from other params) is refused before any work is done.
    """
    path = prepared / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run `cifar10 preprocess` first)") from None
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: unreadable ({error}); run `cifar10 preprocess` again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
        raise PipelineError(
            f"{path}: no checksums (an older or foreign format); run `cifar10 preprocess` again"
        )
    if params is not None:
        made_with = {key: meta.get(key) for key in PreprocessParams.model_fields}
        wanted = params.model_dump()
        if made_with != wanted:
            differences = ", ".join(
                f"preprocess.{key}={made_with[key]} (params say {wanted[key]})"
                for key in wanted
                if made_with[key] != wanted[key]
            )
            raise PipelineError(f"{prepared} was made with {differences}; run `cifar10 preprocess` again")
    return meta


def load_split(prepared: Path, name: str, meta: dict[str, Any]) -> Split | None:
    """Load one split written by `preprocess`, verified against its SHA-256 in `meta`.

    None when the split is absent (val with val_size 0). The file is read once, hashed, then
    parsed: 0.28 s for the 154 MB train split on the 2-core development machine, against 0.10 s
    for an unchecked `load_file`.
    """
    path = prepared / SPLIT_FILES[name]
    expected = meta["sha256"].get(name)
    if expected is None:
        if name == "val":
            return None
        raise PipelineError(f"{prepared / META_FILE}: no {name} split; run `cifar10 preprocess` again")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `cifar10 preprocess` again") from None
    except OSError as error:
        raise PipelineError(
            f"{path}: unreadable ({error.strerror}); run `cifar10 preprocess` again"
        ) from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise PipelineError(
            f"{path}: contents differ from the SHA-256 in {META_FILE} (damaged or changed since "
            "preprocessing); run `cifar10 preprocess` again"
        )
    try:
        tensors = load(data)
        images, labels = tensors["images"], tensors["labels"]
    except (SafetensorError, KeyError, ValueError) as error:
        raise PipelineError(f"{path}: not a valid prepared split ({error})") from None
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or labels.shape != (len(images),):
        raise PipelineError(f"{path}: unexpected tensor shapes {images.shape} / {labels.shape}")
    return Split(images, labels)
