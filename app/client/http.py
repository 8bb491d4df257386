"""``GraftClient``: the HTTP API from Python, with httpx (sync).

- :meth:`GraftClient.upload` hashes the file(s) first and asks the server
  (``GET /v1/checkpoints?sha256=``); only unknown content is sent, a file over 64 MiB as a
  resumable tus upload that survives dropped connections (:mod:`app.client.tus`).
- :meth:`GraftClient.create_job` sends an ``Idempotency-Key`` (a fresh one unless given) and
  retries a request that got no answer with the same key, so a retry never makes two jobs.
- :meth:`GraftClient.events` follows ``GET /v1/jobs/{id}/events`` and reconnects with
  ``Last-Event-ID`` after a dropped connection, until the terminal status.
- Error answers raise the typed errors of :mod:`app.client.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from app.client.errors import GraftClientError, error_from_response
from app.client.sets import upload_files
from app.client.tus import TusOptions, tus_upload

__all__ = ["Event", "GraftClient", "file_sha256", "upload_digest"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TERMINAL = ("succeeded", "failed", "cancelled")
_ARTIFACT_PATHS = {"weights": "weights", "report": "report", "manifest": "manifest"}


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: ``progress`` or ``status`` (``data`` is the job)."""

    id: int
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event == "status" and self.data.get("status") in _TERMINAL


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def upload_digest(paths: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """The sha256 the server records for an upload: a file's own, or for a sharded set the
    sha256 of its sorted ``"<sha256>  <name>"`` lines (``sha256sum`` format); ``names``: the
    files' names in the set, when not their own."""
    named = zip(names or [p.name for p in paths], paths, strict=True)
    files = sorted((name, file_sha256(p)) for name, p in named)
    if len(files) == 1:
        return files[0][1]
    lines = "".join(f"{sha}  {name}\n" for name, sha in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _shard_files(path: Path) -> list[Path]:
    """The files uploading ``path`` sends (:func:`app.client.sets.upload_files`)."""
    return [p for _, p in upload_files(path)]


class GraftClient:
    """A Graft server, over HTTP.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: a key from ``graft keys create`` (not needed in local mode).
        timeout: seconds for connecting and for each read.
        retries: how many times a request that got no answer is sent again.
        transport: an httpx transport (tests).
        tus: when and how single files go as resumable (tus) uploads: over 64 MiB.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        tus: TusOptions | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.retries = retries
        self.tus = tus or TusOptions()

    def __enter__(self) -> GraftClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- plumbing ----------------------------------------------------------------------------

    def check_server(self) -> None:
        """Fail fast, before any file is hashed, when no server answers at the base URL.

        Raises:
            GraftClientError: nothing answers ``GET /healthz`` (one try, 5 s at most); the
                message names the URL and ``graft serve``.
        """
        try:
            self.http.get("/healthz", timeout=5.0)
        except httpx.TransportError as exc:
            raise GraftClientError(
                f"no Graft server answers at {self.http.base_url} ({exc}): start one with "
                "`graft serve`, or point --server (GRAFT_SERVER) at yours"
            ) from exc

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; a connection that failed before any answer is retried (POSTs only
        when they carry an Idempotency-Key, which makes that safe)."""
        idempotent = method != "POST" or "idempotency-key" in {
            k.lower() for k in kwargs.get("headers", {})
        }
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise GraftClientError(f"{method} {url}: {exc}") from exc
                logger.info("%s %s: %s; retrying", method, url, exc)
                time.sleep(min(0.5 * 2**attempt, 5.0))
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")

    def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._request(method, url, **kwargs).json()
        return body

    # -- checkpoints -------------------------------------------------------------------------

    def find_checkpoint(self, sha256: str) -> dict[str, Any] | None:
        """Your checkpoint with this content, or None."""
        found = self._json("GET", "/v1/checkpoints", params={"sha256": sha256, "limit": 1})
        data = found.get("data") or []
        return dict(data[0]) if data else None

    def upload(self, path: str | Path, *, entry: str = "auto") -> dict[str, Any]:
        """Upload a checkpoint file or a sharded set's folder, unless the server has it.

        Args:
            path: a file, or a folder with a Hugging Face sharded set.
            entry: which dict holds the weights (``auto``).

        Returns:
            The checkpoint record (``id``, ``sha256``, ``format``, ``tensors``…).
        """
        named = upload_files(Path(path))
        files = [p for _, p in named]
        digest = upload_digest(files, [n for n, _ in named])
        existing = self.find_checkpoint(digest)
        if existing is not None:
            logger.info("%s: already on the server as %s", path, existing["id"])
            return existing
        if len(files) == 1 and files[0].stat().st_size > self.tus.threshold:
            return tus_upload(
                self.http, files[0], sha256=digest, entry=entry, options=self.tus,
                retries=self.retries, name=named[0][0],
            )  # fmt: skip
        handles: list[BinaryIO] = [f.open("rb") for f in files]
        try:
            parts = [
                ("file", (name, h, "application/octet-stream"))
                for (name, _), h in zip(named, handles, strict=True)
            ]
            # Same bytes again is the same record, so a resend is harmless.
            return self._json(
                "POST", "/v1/checkpoints", files=parts, params={"entry": entry},
                headers={"idempotency-key": f"upload-{uuid.uuid4()}"},
            )  # fmt: skip
        finally:
            for h in handles:
                h.close()

    # -- jobs --------------------------------------------------------------------------------

    def create_job(
        self,
        source: str | dict[str, Any] | None,
        target: dict[str, Any],
        *,
        recipe: dict[str, Any] | None = None,
        output: dict[str, Any] | None = None,
        callback: dict[str, Any] | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        sources: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Queue a conversion (``POST /v1/jobs``) with an ``Idempotency-Key``.

        Args:
            source: a checkpoint id, or ``{"uri": "models:/…" | "https://…"}``; None with
                ``sources``.
            target: ``{"checkpoint": id}``, ``{"skeleton": {...}}`` or
                ``{"architecture": name, "kwargs": {...}}``.
            recipe: a version 1 recipe.
            output: ``{"format", "dtype", "register"}``.
            callback: ``{"url", "events"}``: a signed webhook when it finishes.
            dry_run: the report only.
            idempotency_key: reuse one to retry a creation safely; a fresh one by default.
            sources: several checkpoint ids by name, in place of ``source`` (keys
                ``NAME:KEY`` in the recipe).

        Returns:
            The job.
        """
        body: dict[str, Any] = {"target": target, "dry_run": dry_run}
        body |= {"sources": sources} if sources is not None else {"source": source}
        for name, value in (("recipe", recipe), ("output", output), ("callback", callback)):
            if value is not None:
                body[name] = value
        key = idempotency_key or f"job-{uuid.uuid4()}"
        return self._json("POST", "/v1/jobs", json=body, headers={"idempotency-key": key})

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's webhooks and their attempts."""
        return list(self._json("GET", f"/v1/jobs/{job_id}/deliveries")["data"])

    def rotate_webhook_secret(self) -> str:
        """Create or rotate your webhook signing secret; it is shown only this once."""
        return str(self._json("POST", "/v1/webhooks/secret")["secret"])

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events until its terminal status, reconnecting (with ``Last-Event-ID``)
        when the connection drops.

        Args:
            job_id: the job.
            last_event_id: resume after this event; from the start when None.

        Yields:
            Each event once, in order.
        """
        last = last_event_id
        failures = 0
        while True:
            headers = {"last-event-id": str(last)} if last is not None else {}
            try:
                # No read timeout: a quiet stream is a slow stage (the server sends keep-alives).
                stream_timeout = httpx.Timeout(self.http.timeout.connect, read=None)
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=stream_timeout
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    for event in _parse_sse(response.iter_lines()):
                        failures = 0
                        last = event.id
                        yield event
                        if event.terminal:
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.retries:
                    raise GraftClientError(f"events of job {job_id}: {exc}") from exc
                time.sleep(min(0.5 * 2**failures, 5.0))

    def wait(self, job_id: str) -> dict[str, Any]:
        """Follow the job's events until it finishes. Returns the finished job."""
        job: dict[str, Any] | None = None
        for event in self.events(job_id):
            if event.event == "status":
                job = event.data
        return job if job is not None else self.get_job(job_id)

    def download(self, job_id: str, artifact: str, dest: str | Path) -> Path:
        """Stream a job's ``weights``, ``report`` or ``manifest`` to ``dest`` (atomically).

        Returns:
            ``dest``.
        """
        if artifact not in _ARTIFACT_PATHS:
            raise ValueError(f"artifact is one of {sorted(_ARTIFACT_PATHS)}, not {artifact!r}")
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", f"/v1/jobs/{job_id}/{_ARTIFACT_PATHS[artifact]}") as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            with partial.open("wb") as f:
                for chunk in response.iter_bytes(_CHUNK):
                    f.write(chunk)
        partial.replace(dest)
        return dest


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events from a ``text/event-stream`` (comments and unknown fields ignored)."""
    event_id: int | None = None
    name = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data and event_id is not None:
                yield Event(event_id, name, json.loads("\n".join(data)))
            event_id, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id" and value.isdigit():
            event_id = int(value)
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
