"""Shared fixtures: tiny archives in the official layout, a local HTTP server with faults, a project."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import socketserver
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import pipeline.cores as cores
from pipeline.data import Split
from pipeline.device import DeviceSplit
from pipeline.params import TrainParams, load_params

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORDS = 20  # per batch file: 5 train batches and a test batch


def train_params(*overrides: str) -> TrainParams:
    """The `train` section of the shipped params.yaml with `-S`-style overrides."""
    return load_params(REPO / "params.yaml", list(overrides)).train


# Settings that keep training on 100 images at width 4 to well under a second per epoch.
FAST_TRAINING = [
    "preprocess.val_size=20",
    "model.width=4",
    "train.device=cpu",
    "train.epochs=2",
    "train.batch_size=20",
    "train.compile=false",
    "evaluate.device=cpu",
    "evaluate.batch_size=50",
]


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker on cores of its own (where there are enough), it and every process
    it starts: torch in two workers at 2 threads each on 2 cores spins for a core it does not get
    (a 5-second test took 330 s, another 70 s for 4 s alone), and each test keeps its own registry
    of running trainings (below), so trainings in different workers cannot share the cores through
    pipeline.cores. Pinned, each sees its share as the machine's cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // workers)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    if len(cores) >= workers:
        os.sched_setaffinity(0, cores[index * share : (index + 1) * share])
    torch.set_num_threads(share)


@pytest.fixture
def all_cores() -> Iterator[None]:
    """For a test that needs the machine's cores (a given thread count, say), not its worker's
    share: the cores of the pytest process that started the worker, back to the share after."""
    share = os.sched_getaffinity(0)
    os.sched_setaffinity(0, os.sched_getaffinity(os.getppid()))
    try:
        yield
    finally:
        os.sched_setaffinity(0, share)


@pytest.fixture(autouse=True)
def outside_dvc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start as a user's shell does: not inside a DVC run, no checkpoint folder configured."""
    for name in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "CIFAR10_CHECKPOINTS"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class TinyArchive:
    path: Path
    sha256: str
    train_records: np.ndarray  # uint8 [100, 3073], archive order
    test_records: np.ndarray  # uint8 [20, 3073]


@pytest.fixture(autouse=True)
def private_training_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Trainings a test runs in its own process register in a folder of the test's own
    (pipeline/cores.py): a training running elsewhere on the machine must not change their thread
    count, and with it the last bits of the weights the test compares."""
    folder = tmp_path / "registry"
    monkeypatch.setattr(cores, "registry_folder", lambda: folder)
    return folder


@pytest.fixture
def training_registry(private_training_registry: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own registry of running trainings, and no user thread count."""
    for name in cores.USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return private_training_registry


def records(count: int, seed: int) -> np.ndarray:
    """3073-byte records with labels cycling through 0-9, so every class is present.

    Pixels are noise plus a brightness that grows with the label, so tiny models can learn them.
    """
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rows = generator.integers(0, 96, size=(count, 3073), dtype=np.uint8) + (labels[:, None] * 16).astype(
        np.uint8
    )
    rows[:, 0] = labels
    return rows


def write_archive(
    path: Path,
    members: dict[str, bytes],
    extra: Callable[[tarfile.TarFile], None] | None = None,
) -> str:
    """Write a .tar.gz with `members` (name -> bytes) and return its sha256."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def official_members(train: np.ndarray, test: np.ndarray) -> dict[str, bytes]:
    members = {"cifar-10-batches-bin/batches.meta.txt": ("\n".join(CLASSES) + "\n\n").encode()}
    for number, batch in enumerate(np.split(train, 5), start=1):
        members[f"cifar-10-batches-bin/data_batch_{number}.bin"] = batch.tobytes()
    members["cifar-10-batches-bin/test_batch.bin"] = test.tobytes()
    members["cifar-10-batches-bin/readme.html"] = b"<html>ignored</html>"
    return members


def make_tiny_archive(path: Path) -> TinyArchive:
    """The tests' archive at `path`: 100 training and 20 test records, the same bytes every time."""
    train, test = records(5 * RECORDS, seed=1), records(RECORDS, seed=2)
    sha256 = write_archive(path, official_members(train, test))
    return TinyArchive(path, sha256, train, test)


@pytest.fixture
def tiny_archive(tmp_path: Path) -> TinyArchive:
    return make_tiny_archive(tmp_path / "mirror" / "cifar-10-binary.tar.gz")


@dataclass
class ServerState:
    """What the test server serves and which fault it injects; `requests` records each request's headers."""

    body: bytes = b""
    faults: list[str] = field(default_factory=list)  # consumed one per request; "" means behave
    requests: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        state = self.state
        state.requests.append(dict(self.headers))
        fault = state.faults.pop(0) if state.faults else ""
        body = state.body
        if fault == "404":
            return self._reply(404, b"not found")
        if fault == "500":
            return self._reply(500, b"oops")
        if fault.startswith("429"):
            return self._reply(429, b"slow down", {"Retry-After": fault.split(":")[1]})
        if fault.startswith("redirect"):
            return self._reply(302, b"", {"Location": fault.split(":", 1)[1]})
        if fault == "html":  # a portal or error page served with 200 instead of the file
            return self._reply(200, b"<html><body>Please log in</body></html>", {"Content-Type": "text/html"})
        if fault == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:100])
            self.wfile.flush()
            state.release.wait(30)  # until the test ends; the client times out first
            return None
        start = 0
        range_header = self.headers.get("Range")
        if range_header and fault != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if fault == "drop":  # half the promised bytes, then the connection closes
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        self.wfile.write(body[start:])
        return None

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(socketserver.ThreadingTCPServer):
    """Says nothing when a client drops its connection (the client's side is what tests check)."""

    daemon_threads = True

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Server:
    url: str
    state: ServerState


@pytest.fixture
def http_server() -> Iterator[Server]:
    state = ServerState()
    handler = type("Handler", (FaultyHandler,), {"state": state})
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz", state)
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder holding the repository's params.yaml, made the current directory."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    monkeypatch.chdir(folder)
    return folder


def set_params(path: Path, assignments: list[str]) -> None:
    """Rewrite a params file with `section.key=value` assignments (values read as YAML)."""
    raw = yaml.safe_load(path.read_text())
    for assignment in assignments:
        key, value = assignment.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


CPU = torch.device("cpu")


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, 3, 32, 32] noise."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8))


def random_split(count: int, seed: int = 0) -> DeviceSplit:
    """`count` noise images on the CPU, labels cycling through the 10 classes."""
    labels = np.arange(count) % 10
    return DeviceSplit.from_split(Split(random_images(count, seed).numpy(), labels.astype(np.int64)), CPU)
