"""Blob downloads from any store: a local file, ranged reads streamed from S3, or a redirect.

A store with local files hands them to :class:`~fastapi.responses.FileResponse`, which serves
``Range`` itself. For a remote store the ranges are parsed here, the same way, and each is
streamed from the store with one ranged read; nothing is held whole in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Protocol
from urllib.parse import quote

from fastapi import HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from app.storage import BlobStore

__all__ = ["Downloadable", "blob_response", "parse_ranges"]


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
) -> Response:
    """The response that serves ``blob``.

    Args:
        store: where it lives.
        blob: the artifact record (digest, size, media type, file name).
        range_header: the request's ``Range``, if any.
        attachment: download as ``blob.filename``, with the digest as ``ETag``.
        presigned: redirect (307) to a presigned URL when the store can make one.
    """
    headers = {"ETag": f'"{blob.sha256}"'} if attachment else {}
    filename = blob.filename if attachment else None
    if presigned:
        url = store.presigned_url(blob.sha256, filename=blob.filename, media_type=blob.media_type)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    path = store.local_path(blob.sha256)
    if path is not None:
        return FileResponse(path, media_type=blob.media_type, filename=filename, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    if filename is not None:
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
    ranges = parse_ranges(range_header, blob.size) if range_header else []
    if not ranges:
        headers["Content-Length"] = str(blob.size)
        body = store.iter_range(blob.sha256, 0, blob.size)
        return StreamingResponse(body, media_type=blob.media_type, headers=headers)
    if len(ranges) == 1:
        start, stop = ranges[0]
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{blob.size}"
        headers["Content-Length"] = str(stop - start)
        body = store.iter_range(blob.sha256, start, stop)
        return StreamingResponse(body, 206, headers, media_type=blob.media_type)
    boundary = secrets.token_hex(13)
    parts = [(_part_header(boundary, blob, start, stop), start, stop) for start, stop in ranges]
    closing = f"--{boundary}--".encode("latin-1")
    length = sum(len(head) + stop - start + 2 for head, start, stop in parts) + len(closing)
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        _multipart(store, blob.sha256, parts, closing),
        206,
        headers,
        media_type=f"multipart/byteranges; boundary={boundary}",
    )


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


def parse_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """Parse ``Range: bytes=…`` into sorted, merged half-open ``(start, stop)`` ranges, as
    Starlette's ``FileResponse`` does, so both stores answer alike.

    Raises:
        HTTPException: 400 for a malformed header; 416 (with ``Content-Range: bytes */size``)
            when a range starts past the end.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise HTTPException(400, "the Range header must be `bytes=start-end[, …]`")
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash or not (first.strip() or last.strip()):
            continue  # as Starlette: empty or dashless parts are ignored
        try:
            if first.strip():
                start = int(first)
                stop = int(last) + 1 if last.strip() and int(last) < size else size
            else:
                start, stop = max(size - int(last), 0), size
        except ValueError:
            continue
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
