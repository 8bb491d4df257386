"""The tus 1.0 protocol's HTTP side: its headers, and a PATCH body streamed into the upload.

The part is written as it arrives: chunks (about 1 MiB each, see :mod:`app.api.server`) are
collected up to 8 MiB and handed to a worker thread for one ``writev``, while the running
sha256 is fed on a thread of its own and the loop keeps receiving (all outside the GIL). A
body that is cut (the client went away, or stalled past the body deadline) keeps the bytes
that arrived, as tus core asks, unless the part carries a checksum.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import anyio
from starlette.requests import ClientDisconnect, Request

from app.services.errors import BadRequestError, UploadTooLargeError
from app.services.uploads import PartWriter, UploadInfo
from app.services.uploads.errors import TUS_VERSION, TusVersionError, UnsupportedMediaTypeError

__all__ = [
    "OFFSET_TYPE",
    "TUS_EXTENSIONS",
    "PartBody",
    "check_part_request",
    "check_tus_resumable",
    "encode_metadata",
    "header_int",
    "receive_part",
    "tus_headers",
]

OFFSET_TYPE = "application/offset+octet-stream"
TUS_EXTENSIONS = "creation,termination,checksum"
_FLUSH_BYTES = 8 << 20


def tus_headers(**more: str) -> dict[str, str]:
    """``Tus-Resumable`` (on every answer but OPTIONS) plus ``more``."""
    return {"Tus-Resumable": TUS_VERSION, **more}


def check_tus_resumable(request: Request) -> None:
    """Refuse (412) a request that does not speak tus 1.0.0."""
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise TusVersionError(
            f"Tus-Resumable is {version!r:.40}; this server speaks tus {TUS_VERSION} only"
        )


def header_int(request: Request, name: str) -> int:
    """A non-negative integer header (400 when absent or malformed)."""
    text = request.headers.get(name)
    if text is None or not text.isdigit() or len(text) > 19:
        raise BadRequestError(f"{name}: a non-negative integer is required")
    return int(text)


def encode_metadata(metadata: dict[str, str]) -> str:
    """``Upload-Metadata`` as HEAD answers it."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()
    )


def check_part_request(request: Request, info: UploadInfo) -> int:
    """Check a PATCH's type and announced size; return its ``Upload-Offset``.

    Raises:
        UnsupportedMediaTypeError: not ``application/offset+octet-stream`` (415).
        UploadTooLargeError: ``Content-Length`` runs past the upload's length (413).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_TYPE:
        raise UnsupportedMediaTypeError(
            f"a PATCH body must be {OFFSET_TYPE}, not {content_type or 'untyped'!r:.60}"
        )
    offset = header_int(request, "upload-offset")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and offset + int(declared) > info.length:
        raise _past_end(info)
    return offset


def _past_end(info: UploadInfo) -> UploadTooLargeError:
    return UploadTooLargeError(
        f"the part runs past the upload's Upload-Length ({info.length} bytes)", limit=info.length
    )


@dataclass
class PartBody:
    """How a PATCH body ended: ``intact`` (whole), else cut, with ``error`` to re-raise."""

    intact: bool
    error: BaseException | None = None


async def receive_part(request: Request, writer: PartWriter, info: UploadInfo) -> PartBody:
    """Stream the body into ``writer``, up to the upload's length.

    Returns:
        Whether the body arrived whole; when it was cut, the error (if any) to raise once
        the bytes that arrived are kept. Bytes past the length are never written.
    """
    room = info.length - writer.size
    batch: list[bytes] = []
    size = 0
    pending: asyncio.Future[None] | None = None
    loop = asyncio.get_running_loop()
    outcome = PartBody(intact=True)
    try:
        async for chunk in request.stream():
            if len(chunk) > room:
                raise _past_end(info)
            room -= len(chunk)
            batch.append(chunk)
            size += len(chunk)
            if size >= _FLUSH_BYTES:
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, writer.write_many, batch)
                batch, size = [], 0
    except ClientDisconnect:
        outcome = PartBody(intact=False)
    except Exception as exc:  # the body deadline (408), a part past the end (413)
        outcome = PartBody(intact=False, error=exc)
    # Whatever happened, what arrived is written before the part is judged.
    with anyio.CancelScope(shield=True):
        if pending is not None:
            await pending
        if batch:
            await loop.run_in_executor(None, writer.write_many, batch)
    return outcome
