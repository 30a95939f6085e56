"""Fetch the CIFAR-10 archive over HTTP(S) or from a local mirror, verified by SHA-256.

The file appears at its final path only after its hash matches: bytes go to a partial file in
the same folder, which is fsynced and renamed over the target. An interrupted transfer resumes
with a Range request when the server answers 206 with a matching Content-Range, and starts over
otherwise. Timeouts, dropped connections, 5xx and 429 are retried with exponential backoff
(honouring Retry-After); a host that does not resolve or refuses the connection, and any other
4xx, fail at once; https is never downgraded to http.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from pipeline.errors import DownloadError
from pipeline.files import CHUNK_BYTES, atomic_file, fsync_directory, sha256_file
from pipeline.params import DataParams
from pipeline.progress import progress

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 300.0
RETRIED_STATUSES = frozenset({408, 425, 429})  # plus every 5xx


def archive_matches(target: Path, sha256: str) -> bool:
    """Whether `target` is a file with this SHA-256 (the archive is there: nothing to fetch)."""
    return target.is_file() and sha256_file(target) == sha256


def _local_source(url: str) -> Path | None:
    """The path of a file:// URL or a plain local path; None for http(s)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"{url}: file:// URLs must name a local path (file:///path)")
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(url).expanduser()
    raise DownloadError(f"{url}: unsupported URL scheme {parsed.scheme!r} (use https, http, file or a path)")


def _mismatch(source: str, expected: str, actual: str, received: str) -> DownloadError:
    """The hash line, with what was received: an HTML error page or a re-encoded body shows at once."""
    return DownloadError(f"sha256 mismatch for {source}: expected {expected}, got {actual} ({received})")


def _copy_local(source: Path, target: Path, expected: str) -> None:
    if source.is_dir():
        raise DownloadError(f"{source}: is a folder, not the archive file")
    if not source.is_file():
        raise DownloadError(f"{source}: no such file")
    digest = hashlib.sha256()
    with (
        source.open("rb") as reader,
        atomic_file(target) as writer,
        progress(f"copy {source.name}", source.stat().st_size, in_bytes=True, log_every=0.1) as advance,
    ):
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            advance(len(chunk))
        if digest.hexdigest() != expected:  # atomic_file removes the temporary
            raise _mismatch(str(source), expected, digest.hexdigest(), f"read {writer.tell():,} bytes")


class _Retry(Exception):
    """A failed attempt worth repeating after `delay` seconds (None: the backoff schedule decides)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER_SECONDS)


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _HttpTransfer:
    """One URL fetched into one partial file, resumed across attempts."""

    def __init__(self, url: str, partial: Path, client: httpx.Client) -> None:
        self.url = url
        self.partial = partial
        self.client = client
        self.resumed = False  # some bytes in the partial file came from an earlier attempt or run
        self.received = ""  # what the last answer said it was: Content-Type and Content-Encoding

    def attempt(self) -> None:
        """Fetch the rest of the file; raise _Retry or DownloadError on failure."""
        offset = self.partial.stat().st_size if self.partial.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # the file's own bytes, never a compressed rendition
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self.client.stream("GET", self.url, headers=headers) as response:
            status = response.status_code
            if status == 416:  # our partial file is not a prefix the server recognises
                self.partial.unlink(missing_ok=True)
                raise _Retry("server refused the byte range; starting over", delay=0.0)
            if status in RETRIED_STATUSES or status >= 500:
                raise _Retry(f"HTTP {status} {response.reason_phrase}", _retry_after(response))
            if status >= 400:
                raise DownloadError(f"{self.url}: HTTP {status} {response.reason_phrase}")
            self.received = ", ".join(
                f"{name} {response.headers[name]}"
                for name in ("Content-Type", "Content-Encoding")
                if name in response.headers
            )
            if status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != offset:
                    self.partial.unlink(missing_ok=True)
                    raise _Retry("server answered another byte range; starting over", delay=0.0)
                total = None if match.group(3) == "*" else int(match.group(3))
                mode = "ab"
                self.resumed = self.resumed or offset > 0
                logger.info("resuming %s at byte %d", self.url, offset)
            elif status == 200:
                if offset:
                    logger.info("server ignored the range request; starting over")
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None and length.isdigit() else None
                offset, mode = 0, "wb"
            else:
                raise DownloadError(f"{self.url}: unexpected HTTP {status} {response.reason_phrase}")
            with (
                self.partial.open(mode) as writer,
                progress(
                    f"download {Path(urlparse(self.url).path).name}", total, in_bytes=True, log_every=0.1
                ) as advance,
            ):
                advance(offset)
                # raw: no Content-Encoding may alter the bytes; unsized: what arrived is kept on an error
                for chunk in response.iter_raw():
                    writer.write(chunk)
                    advance(len(chunk))
                writer.flush()
                os.fsync(writer.fileno())
        size = self.partial.stat().st_size
        if total is not None and size != total:
            raise _Retry(f"connection closed after {size} of {total} bytes")


def _download_http(url: str, target: Path, params: DataParams, sleep: Callable[[float], None]) -> None:
    partial = target.with_name(f".{target.name}.{params.sha256[:16]}.part")
    secure = urlparse(url).scheme == "https"

    def refuse_downgrade(request: httpx.Request) -> None:
        if secure and request.url.scheme != "https":
            raise DownloadError(f"refusing to follow a redirect from https to {request.url}")

    timeout = httpx.Timeout(params.read_timeout, connect=params.connect_timeout)
    with httpx.Client(
        timeout=timeout, follow_redirects=True, event_hooks={"request": [refuse_downgrade]}
    ) as client:
        transfer = _HttpTransfer(url, partial, client)
        failures = 0
        restarted_after_mismatch = False
        while True:
            try:
                transfer.attempt()
            except httpx.TooManyRedirects:
                raise DownloadError(
                    f"{url}: more than {client.max_redirects} redirects (a redirect loop?)"
                ) from None
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:  # e.g. a redirect to ftp://
                raise DownloadError(f"{url}: {error}") from None
            except httpx.ConnectError as error:  # no such host, or nothing listens: retrying will not help
                host = error.request.url.host if error.request else urlparse(url).hostname
                raise DownloadError(
                    f"cannot reach {host} for data.url {url} ({error}); offline? point data.url and "
                    "data.sha256 at a copy of the archive (docs/data.md, Using a mirror)"
                ) from None
            except (_Retry, httpx.TransportError) as error:
                if failures >= params.retries:
                    attempts = f"{failures + 1} attempt{'s' if failures else ''}"
                    raise DownloadError(f"{url}: giving up after {attempts}: {error}") from None
                scheduled = params.backoff * 2**failures
                requested = error.delay if isinstance(error, _Retry) else None  # Retry-After, or 0 to restart
                if requested is None:
                    delay = scheduled
                else:  # a restart goes at once; a server's Retry-After is a minimum wait
                    delay = 0.0 if requested == 0 else max(requested, scheduled)
                failures += 1
                reason = str(error) or type(error).__name__
                logger.warning("attempt %d failed (%s); retrying in %.1f s", failures, reason, delay)
                sleep(delay)
                continue
            actual = sha256_file(partial)
            size = partial.stat().st_size
            if actual == params.sha256:
                os.replace(partial, target)
                fsync_directory(target.parent)
                return
            partial.unlink()
            if transfer.resumed and not restarted_after_mismatch:
                logger.warning("hash mismatch after resuming a partial file; downloading from scratch")
                transfer.resumed, restarted_after_mismatch = False, True
                continue
            received = f"received {size:,} bytes" + (f", {transfer.received}" if transfer.received else "")
            raise _mismatch(url, params.sha256, actual, received)


def download(params: DataParams, target: Path, *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Make `target` hold the archive at `params.url` with hash `params.sha256`.

    Returns False when a matching file was already there, True when it was fetched.
    Raises DownloadError; on any failure the target keeps its previous content.
    """
    if archive_matches(target, params.sha256):
        logger.info("%s already matches sha256 %s; skipping", target, params.sha256)
        return False
    if target.is_file():
        logger.info("%s does not match the expected hash; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = _local_source(params.url)
    started = time.monotonic()
    try:
        if source is not None:
            _copy_local(source, target, params.sha256)
        else:
            _download_http(params.url, target, params, sleep)
    except OSError as error:
        for leftover in target.parent.glob(f".{target.name}*"):
            leftover.unlink(missing_ok=True)
        raise DownloadError(f"cannot write {target}: {error.strerror or error}") from None
    size = target.stat().st_size
    logger.info("wrote %s (%d bytes, sha256 ok) in %.1f s", target, size, time.monotonic() - started)
    return True
