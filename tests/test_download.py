from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import pytest

from pipeline.download import download
from pipeline.errors import DownloadError
from pipeline.params import DataParams
from tests.conftest import Server, TinyArchive


def data_params(url: str, sha256: str, **changes: Any) -> DataParams:
    values: dict[str, Any] = {
        "url": url,
        "sha256": sha256,
        "connect_timeout": 2.0,
        "read_timeout": 0.5,
        "retries": 3,
        "backoff": 0.25,
    }
    return DataParams(**(values | changes))


class Sleeps(list[float]):
    """Records requested waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def served(http_server: Server, tiny_archive: TinyArchive) -> Server:
    http_server.state.body = tiny_archive.path.read_bytes()
    return http_server


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_fresh_download(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "archive.tar.gz"
    assert download(data_params(served.url, tiny_archive.sha256), target, sleep=Sleeps()) is True
    assert target.read_bytes() == served.state.body
    assert leftovers(target.parent) == ["archive.tar.gz"]


def test_dropped_connection_resumes_with_range(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    served.state.faults = ["drop"]
    target = tmp_path / "archive.tar.gz"
    sleeps = Sleeps()
    download(data_params(served.url, tiny_archive.sha256), target, sleep=sleeps)
    assert target.read_bytes() == served.state.body
    half = len(served.state.body) // 2
    assert served.state.requests[1].get("Range") == f"bytes={half}-", served.state.requests
    assert sleeps == [0.25]


def test_server_ignoring_range_restarts_cleanly(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    served.state.faults = ["drop", "ignore_range"]
    target = tmp_path / "archive.tar.gz"
    download(data_params(served.url, tiny_archive.sha256), target, sleep=Sleeps())
    assert "Range" in served.state.requests[1]
    assert target.read_bytes() == served.state.body  # the 200 body replaced the partial file, not appended


def test_server_error_is_retried_with_backoff(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    served.state.faults = ["500", "500"]
    sleeps = Sleeps()
    download(data_params(served.url, tiny_archive.sha256), tmp_path / "a.tar.gz", sleep=sleeps)
    assert sleeps == [0.25, 0.5]
    assert len(served.state.requests) == 3


def test_retry_after_is_honoured(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    served.state.faults = ["429:7"]
    sleeps = Sleeps()
    download(data_params(served.url, tiny_archive.sha256), tmp_path / "a.tar.gz", sleep=sleeps)
    assert sleeps == [7.0]


def test_not_found_fails_fast(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    served.state.faults = ["404"]
    sleeps = Sleeps()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(data_params(served.url, tiny_archive.sha256), tmp_path / "a.tar.gz", sleep=sleeps)
    assert sleeps == [] and len(served.state.requests) == 1
    assert leftovers(tmp_path) == [p.name for p in tmp_path.iterdir() if p.is_dir()]  # no files left


def test_gives_up_after_the_retries(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    served.state.faults = ["500"] * 10
    with pytest.raises(DownloadError, match="giving up after 3 attempts"):
        download(
            data_params(served.url, tiny_archive.sha256, retries=2), tmp_path / "a.tar.gz", sleep=Sleeps()
        )


def test_stalled_server_times_out_and_resumes(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    served.state.faults = ["stall"]
    target = tmp_path / "archive.tar.gz"
    download(data_params(served.url, tiny_archive.sha256, read_timeout=0.2), target, sleep=Sleeps())
    assert served.state.requests[1]["Range"] == "bytes=100-"
    assert target.read_bytes() == served.state.body


def test_hash_mismatch_leaves_nothing(served: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "archive.tar.gz"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as caught:
        download(data_params(served.url, wrong), target, sleep=Sleeps())
    message = str(caught.value)
    assert wrong in message and hashlib.sha256(served.state.body).hexdigest() in message
    assert leftovers(target.parent) == []


def test_hash_mismatch_says_what_arrived(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    served.state.faults = ["html"]
    with pytest.raises(DownloadError) as caught:
        download(data_params(served.url, tiny_archive.sha256), tmp_path / "a.tar.gz", sleep=Sleeps())
    assert str(caught.value).endswith("(received 39 bytes, Content-Type text/html)")


def test_redirect_loop_is_one_clear_error(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    served.state.faults = ["redirect:" + served.url] * 30
    sleeps = Sleeps()
    with pytest.raises(DownloadError) as caught:
        download(data_params(served.url, tiny_archive.sha256), tmp_path / "a.tar.gz", sleep=sleeps)
    assert str(caught.value) == f"{served.url}: more than 20 redirects (a redirect loop?)"
    assert sleeps == [] and len(served.state.requests) == 21  # not retried


def test_a_folder_is_not_the_archive(tiny_archive: TinyArchive, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        download(data_params(str(tmp_path), tiny_archive.sha256), tmp_path / "raw" / "a.tar.gz")
    assert str(caught.value) == f"{tmp_path}: is a folder, not the archive file"


def test_stale_partial_file_is_verified_and_replaced(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    target = tmp_path / "archive.tar.gz"
    stale = target.with_name(f".{target.name}.{tiny_archive.sha256[:16]}.part")
    stale.write_bytes(b"garbage from an earlier crash" * 10)
    download(data_params(served.url, tiny_archive.sha256), target, sleep=Sleeps())
    assert target.read_bytes() == served.state.body
    assert "Range" in served.state.requests[0] and "Range" not in served.state.requests[1]
    assert leftovers(tmp_path) == ["archive.tar.gz", "mirror"]


def test_https_is_never_downgraded(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    served.state.faults = ["redirect:" + served.url]
    https_url = served.url.replace("http://", "https://")
    with pytest.raises(DownloadError):
        download(
            data_params(https_url, tiny_archive.sha256, retries=0), tmp_path / "a.tar.gz", sleep=Sleeps()
        )


def test_redirect_refusal_on_downgrade(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://mirror.example/cifar.tar.gz"})

    original = httpx.Client.__init__

    def with_mock_transport(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        original(self, *args, transport=httpx.MockTransport(answer), **kwargs)

    monkeypatch.setattr(httpx.Client, "__init__", with_mock_transport)
    with pytest.raises(DownloadError, match="refusing to follow a redirect from https"):
        download(
            data_params("https://secure.example/cifar.tar.gz", "0" * 64),
            tmp_path / "a.tar.gz",
            sleep=Sleeps(),
        )


@pytest.mark.parametrize("form", ["file_url", "path"])
def test_local_sources(form: str, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    url = tiny_archive.path.as_uri() if form == "file_url" else str(tiny_archive.path)
    target = tmp_path / "raw" / "archive.tar.gz"
    download(data_params(url, tiny_archive.sha256), target)
    assert target.read_bytes() == tiny_archive.path.read_bytes()


def test_local_mismatch_leaves_nothing(tiny_archive: TinyArchive, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "archive.tar.gz"
    with pytest.raises(DownloadError, match=r"sha256 mismatch .* \(read 346,609 bytes\)$"):
        download(data_params(str(tiny_archive.path), "f" * 64), target)
    assert leftovers(target.parent) == []


def test_skips_when_present(served: Server, tiny_archive: TinyArchive, tmp_path: Path) -> None:
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(served.state.body)
    assert download(data_params(served.url, tiny_archive.sha256), target) is False
    assert served.state.requests == []


def test_disk_full_keeps_old_file_and_removes_temporary(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(b"previous content")
    real_open = Path.open

    class FullDisk:
        """A file whose writes fail as on a full disk."""

        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    def open_on_full_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        return FullDisk(handle) if self.name.endswith(".part") else handle

    monkeypatch.setattr(Path, "open", open_on_full_disk)
    with pytest.raises(DownloadError, match="No space left on device"):
        download(data_params(served.url, tiny_archive.sha256), target, sleep=Sleeps())
    assert target.read_bytes() == b"previous content"
    assert leftovers(tmp_path) == ["archive.tar.gz", "mirror"]


def test_one_attempt_is_said_in_the_singular(
    served: Server, tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    served.state.faults = ["500"]
    with pytest.raises(DownloadError, match=r"giving up after 1 attempt: "):
        download(
            data_params(served.url, tiny_archive.sha256, retries=0), tmp_path / "a.tar.gz", sleep=Sleeps()
        )


def test_an_unreachable_host_fails_at_once_naming_data_url_and_the_mirror_docs(
    tiny_archive: TinyArchive, tmp_path: Path
) -> None:
    """Offline, or nothing listening: no retries to wait through (a closed port on 127.0.0.1 refuses
    at once, as a name that does not resolve fails)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"
    sleeps = Sleeps()
    with pytest.raises(DownloadError) as raised:
        target = tmp_path / "raw" / "a.tar.gz"
        download(data_params(url, tiny_archive.sha256, retries=5), target, sleep=sleeps)
    message = str(raised.value)
    assert message.startswith(f"cannot reach 127.0.0.1 for data.url {url} (")
    assert message.endswith(
        "offline? point data.url and data.sha256 at a copy of the archive (docs/data.md, Using a mirror)"
    )
    assert sleeps == [] and leftovers(tmp_path / "raw") == []
    assert "## Using a mirror" in (Path(__file__).parent.parent / "docs" / "data.md").read_text()
