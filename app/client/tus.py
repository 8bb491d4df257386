"""Resumable uploads from the client: the tus 1.0 protocol against ``/v1/uploads``.

:meth:`app.client.GraftClient.upload` sends a single file over :attr:`TusOptions.threshold`
bytes (64 MiB) this way, in parts of :attr:`TusOptions.part_size`. A dropped connection
does not start over: the server keeps the bytes that arrived, the client asks how far it got
(``HEAD``) and sends the rest, up to ``retries`` times in a row. The upload's URL is kept in
a small state file (``<cache>/graft/uploads/<sha256>-<server>.json``), so an upload cut by a
crash or a Ctrl-C resumes from the server's offset the next time the same file is sent to
the same server. Integrity is checked end to end: the record's sha256 (computed by the
server as the bytes arrived) must be the file's. Per-part ``Upload-Checksum`` headers
(:attr:`TusOptions.checksum`) cost one more read and hash of every part on each side, so
they are off by default.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.client.errors import GraftAPIError, GraftClientError, error_from_response

__all__ = ["TusOptions", "default_state_dir", "tus_upload"]

logger = logging.getLogger(__name__)

_TUS = {"Tus-Resumable": "1.0.0"}
_READ = 1 << 20


def default_state_dir() -> Path:
    """``$XDG_CACHE_HOME/graft/uploads`` (``~/.cache/graft/uploads``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "graft" / "uploads"


@dataclass(frozen=True)
class TusOptions:
    """When and how the client uses resumable uploads.

    Attributes:
        threshold: files larger than this go over tus (smaller ones in one POST).
        part_size: the bytes of one PATCH.
        state_dir: where upload URLs are remembered between runs.
        checksum: send each part's sha256 (``Upload-Checksum``); a part cut on the way is
            then dropped whole by the server instead of kept up to the cut.
    """

    threshold: int = 64 * 1024**2
    part_size: int = 64 * 1024**2
    state_dir: Path = field(default_factory=default_state_dir)
    checksum: bool = False


def _state_file(options: TusOptions, server: str, sha256: str) -> Path:
    server_key = hashlib.sha256(server.encode()).hexdigest()[:16]
    return options.state_dir / f"{sha256}-{server_key}.json"


def _read_part(path: Path, start: int, size: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = size
        while left > 0 and (chunk := fh.read(min(_READ, left))):
            left -= len(chunk)
            yield chunk


def _part_checksum(path: Path, start: int, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in _read_part(path, start, size):
        digest.update(chunk)
    return "sha256 " + base64.b64encode(digest.digest()).decode()


def _metadata(name: str, entry: str) -> str:
    pairs = {"filename": name, "entry": entry}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


class _Upload:
    """One file's tus upload, its URL remembered in a state file."""

    def __init__(
        self, http: httpx.Client, path: Path, state: Path, options: TusOptions, name: str
    ) -> None:
        self.http = http
        self.path = path
        self.name = name
        self.state = state
        self.part_size = options.part_size
        self.checksum = options.checksum
        self.size = path.stat().st_size
        self.url: str | None = None

    def resume_or_create(self, entry: str) -> int:
        """The offset to send from: a remembered upload's (HEAD), else 0 on a new one."""
        if self.state.is_file():
            url = json.loads(self.state.read_text()).get("url")
            response = self.http.head(url, headers=_TUS)
            if response.status_code == 200:
                self.url = str(url)
                offset = int(response.headers["Upload-Offset"])
                logger.info("%s: resuming upload %s at %d bytes", self.path, url, offset)
                return offset
            self.state.unlink(missing_ok=True)  # expired, deleted, or another server's
        response = self.http.post(
            "/v1/uploads",
            headers={
                **_TUS,
                "Upload-Length": str(self.size),
                "Upload-Metadata": _metadata(self.name, entry),
            },
        )
        if response.status_code != 201:
            raise error_from_response(response)
        self.url = str(httpx.URL(str(self.http.base_url)).join(response.headers["Location"]))
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(json.dumps({"url": self.url, "path": str(self.path)}))
        return 0

    def offset(self) -> int:
        """Where the server is (after a dropped connection)."""
        response = self.http.head(self.url or "", headers=_TUS)
        if response.status_code != 200:
            raise error_from_response(response)
        return int(response.headers["Upload-Offset"])

    def send_part(self, offset: int) -> httpx.Response:
        """PATCH the part at ``offset`` (streamed from the file)."""
        size = min(self.part_size, self.size - offset)
        headers = {
            **_TUS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
            "Content-Length": str(size),
        }
        if self.checksum:
            headers["Upload-Checksum"] = _part_checksum(self.path, offset, size)
        return self.http.patch(
            self.url or "", content=_read_part(self.path, offset, size), headers=headers
        )


def tus_upload(
    http: httpx.Client,
    path: Path,
    *,
    sha256: str,
    entry: str,
    options: TusOptions,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
    name: str | None = None,
) -> dict[str, Any]:
    """Upload ``path`` over tus, resuming a remembered upload of the same file.

    Args:
        http: the client (base URL and key set).
        sha256: the file's digest (names its state file; the record must have it).
        name: its name on the server (default: its own; a Megatron rank file's
            ``mp_rank_00_000/model_optim_rng.pt``).
        retries: dropped connections in a row before giving up (the state file stays, so
            the next run resumes).

    Returns:
        The checkpoint record (as ``POST /v1/checkpoints`` answers it).
    """
    state = _state_file(options, str(http.base_url), sha256)
    upload = _Upload(http, path, state, options, name or path.name)
    offset = upload.resume_or_create(entry)
    try:
        record = _send(upload, offset, retries=retries, sleep=sleep)
    except GraftAPIError:
        upload.state.unlink(missing_ok=True)  # refused: the next run starts afresh
        raise
    if record["sha256"] != sha256:
        raise GraftClientError(
            f"{path}: the server recorded sha256 {record['sha256']}, not the file's {sha256}; "
            "the bytes changed on the way (or the file changed while it was sent)"
        )
    return record


def _send(
    upload: _Upload, offset: int, *, retries: int, sleep: Callable[[float], None]
) -> dict[str, Any]:
    """Send from ``offset`` to the end; the checkpoint record."""
    http, path = upload.http, upload.path
    failures = 0
    while offset < upload.size:
        try:
            if failures:  # after a cut: where did the server get to?
                offset = upload.offset()
                if offset >= upload.size:
                    break
            offset = _next_offset(upload, offset)
            failures = 0
        except httpx.TransportError as exc:
            failures += 1
            if failures > retries:
                raise GraftClientError(
                    f"upload of {path} cut {failures} times ({exc}); run again to resume it"
                ) from exc
            logger.info("%s: %s; resuming", path, exc)
            sleep(min(0.5 * 2 ** (failures - 1), 5.0))
    status = _status(http, upload)
    if not status["complete"]:  # all bytes arrived, but making the record failed: again
        _next_offset(upload, upload.size)
        status = _status(http, upload)
    upload.state.unlink(missing_ok=True)
    record: dict[str, Any] = status["checkpoint"]
    return record


def _next_offset(upload: _Upload, offset: int) -> int:
    """Send the part at ``offset``; the server's offset after it."""
    response = upload.send_part(offset)
    if response.status_code == 409:  # not where we thought, or a cut PATCH still held
        raise httpx.ReadError("409: the server is elsewhere; asking it (HEAD)")
    if response.status_code == 460:  # corrupted on the way: send it again
        raise httpx.ReadError("the part arrived corrupted (460 Checksum Mismatch)")
    if response.status_code >= 400:
        raise error_from_response(response)
    return int(response.headers["Upload-Offset"])


def _status(http: httpx.Client, upload: _Upload) -> dict[str, Any]:
    response = http.get(upload.url or "")
    if response.status_code != 200:
        raise error_from_response(response)
    body: dict[str, Any] = response.json()
    return body
