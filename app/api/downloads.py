"""Blob downloads from any store: a local file, ranged reads streamed from S3, or a redirect.

A whole local file goes to :class:`~fastapi.responses.FileResponse`. Any ``Range`` is parsed
here, for every store, so that errors are problem+json (400 malformed, 416 unsatisfiable) and
a range in a unit other than ``bytes`` is ignored (RFC 9110 §14.2: the whole file, 200); each
range is then streamed from the store with one ranged read, nothing held whole in memory.
``HEAD`` gets exactly the ``GET`` headers and no body; :func:`download_route` registers both.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from app.storage import BlobStore

__all__ = ["Downloadable", "blob_response", "download_route", "parse_ranges"]

F = TypeVar("F", bound=Callable[..., Any])


def download_route(router: APIRouter, path: str, **kwargs: Any) -> Callable[[F], F]:
    """Register ``GET path`` (documented) and ``HEAD path`` (same handler, kept out of the
    OpenAPI document so operation ids stay unique). The handler passes
    ``head=request.method == "HEAD"`` to :func:`blob_response`."""

    def register(endpoint: F) -> F:
        router.add_api_route(path, endpoint, methods=["GET"], **kwargs)
        head_kwargs = {k: v for k, v in kwargs.items() if k not in ("responses", "summary")}
        head_kwargs["include_in_schema"] = False
        router.add_api_route(path, endpoint, methods=["HEAD"], **head_kwargs)
        return endpoint

    return register


class Downloadable(Protocol):
    """What a download needs to know of a stored artifact."""

    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def media_type(self) -> str: ...
    @property
    def filename(self) -> str: ...


def blob_response(
    store: BlobStore,
    blob: Downloadable,
    *,
    range_header: str | None = None,
    attachment: bool = False,
    presigned: bool = False,
    head: bool = False,
    filename: str | None = None,
) -> Response:
    """The response that serves ``blob``.

    Args:
        store: where it lives.
        blob: the artifact record (digest, size, media type, file name).
        range_header: the request's ``Range``, if any.
        attachment: download as ``blob.filename``, with the digest as ``ETag``.
        presigned: redirect (307) to a presigned URL when the store can make one.
        head: a ``HEAD`` request: the same status and headers, no body.
        filename: the attachment's name, when not ``blob.filename`` (see
            :func:`app.services.jobs.naming.download_filename`).

    Raises:
        HTTPException: 400 for a malformed ``bytes`` range, 416 for an unsatisfiable one.
    """
    headers = {"ETag": f'"{blob.sha256}"'} if attachment else {}
    filename = (filename or blob.filename) if attachment else None
    if presigned:
        url = store.presigned_url(
            blob.sha256, filename=filename or blob.filename, media_type=blob.media_type
        )
        if url is not None:
            return RedirectResponse(url, status_code=307)
    ranges = parse_ranges(range_header, blob.size) if range_header else None
    path = store.local_path(blob.sha256)
    if path is not None and ranges is None:
        # FileResponse answers HEAD with its GET headers itself; _FileResponse hides a Range
        # header we chose to ignore (another unit) from it.
        return _FileResponse(path, media_type=blob.media_type, filename=filename, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    if filename is not None:
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
    if not ranges:
        headers["Content-Length"] = str(blob.size)
        if head:
            return Response(None, 200, headers, media_type=blob.media_type)
        body = store.iter_range(blob.sha256, 0, blob.size)
        return StreamingResponse(body, media_type=blob.media_type, headers=headers)
    if len(ranges) == 1:
        start, stop = ranges[0]
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{blob.size}"
        headers["Content-Length"] = str(stop - start)
        if head:
            return Response(None, 206, headers, media_type=blob.media_type)
        body = store.iter_range(blob.sha256, start, stop)
        return StreamingResponse(body, 206, headers, media_type=blob.media_type)
    boundary = secrets.token_hex(13)
    parts = [(_part_header(boundary, blob, start, stop), start, stop) for start, stop in ranges]
    closing = f"--{boundary}--".encode("latin-1")
    length = sum(len(head) + stop - start + 2 for head, start, stop in parts) + len(closing)
    headers["Content-Length"] = str(length)
    media_type = f"multipart/byteranges; boundary={boundary}"
    if head:
        return Response(None, 206, headers, media_type=media_type)
    return StreamingResponse(
        _multipart(store, blob.sha256, parts, closing), 206, headers, media_type=media_type
    )


class _FileResponse(FileResponse):
    """A whole file, whatever ``Range`` the request carries (ranges are served above)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


def _part_header(boundary: str, blob: Downloadable, start: int, stop: int) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: {blob.media_type}\r\n"
        f"Content-Range: bytes {start}-{stop - 1}/{blob.size}\r\n\r\n"
    ).encode("latin-1")


def _multipart(
    store: BlobStore, sha256: str, parts: list[tuple[bytes, int, int]], closing: bytes
) -> Iterator[bytes]:
    for head, start, stop in parts:
        yield head
        yield from store.iter_range(sha256, start, stop)
        yield b"\r\n"
    yield closing


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Parse ``Range: bytes=…`` into sorted, merged half-open ``(start, stop)`` ranges.

    Returns:
        The ranges, or None when the header names another unit (ignored: the whole file).

    Raises:
        HTTPException: 400 for a malformed ``bytes`` range; 416 (with
            ``Content-Range: bytes */size``) when a range starts past the end.
    """
    unit, sep, spec = header.partition("=")
    if not sep:
        raise HTTPException(400, "the Range header must be `bytes=start-end[, …]`")
    if unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        first, dash, last = (p.strip() for p in part.strip().partition("-"))
        if not part.strip():
            continue  # "bytes=0-1," : an empty item is harmless
        if (
            not dash
            or not (first or last)
            or not ((first + last).isascii() and (first + last).isdigit())
        ):
            raise HTTPException(400, f"malformed byte range {part.strip()!r:.40}")
        if first:
            start = int(first)
            stop = int(last) + 1 if last and int(last) < size else size
        else:
            start, stop = max(size - int(last), 0), size
        ranges.append((start, stop))
    if not ranges:
        raise HTTPException(400, "the Range header names no range")
    if any(not 0 <= start < size for start, _ in ranges):
        raise HTTPException(
            416, f"a range starts past the end ({size} bytes)", {"Content-Range": f"bytes */{size}"}
        )
    if any(start >= stop for start, stop in ranges):
        raise HTTPException(400, "a range ends before it starts")
    ranges.sort()
    merged = [ranges[0]]
    for start, stop in ranges[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged
