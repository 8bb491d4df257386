"""Resumable uploads (tus 1.0: core, creation, termination, checksum with sha256).

The API layer parses the protocol's headers and streams each PATCH body into the
:class:`~app.services.uploads.state.PartWriter` this module hands out; here are the rules:
offsets must match, a part must not run past the announced length, a part whose
``Upload-Checksum`` does not match is dropped, and the part that reaches the length completes
the upload through :func:`app.services.checkpoints.register_upload`: the same sandboxed
inspection and dedupe by sha256 as ``POST /v1/checkpoints``, with the digest carried across
parts (nothing is hashed again).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from anyio import to_thread
from sqlalchemy.orm import Session

from app.db.models import Checkpoint
from app.errors import GraftError
from app.services import checkpoints as checkpoints_service
from app.services.errors import BadRequestError, UploadTooLargeError
from app.services.inspector import InspectorPool
from app.services.uploads.errors import (
    ChecksumMismatchError,
    OffsetMismatchError,
    UnsupportedChecksumError,
)
from app.services.uploads.state import PartWriter, ResumableUploads, UploadInfo
from app.storage import BlobStore

__all__ = [
    "PartChecksum",
    "begin_part",
    "complete_upload",
    "create_upload",
    "finish_part",
    "parse_checksum",
    "parse_metadata",
]

_METADATA_KEYS = frozenset({"filename", "entry", "filetype", "name", "type"})
_MAX_METADATA_BYTES = 4096


@dataclass(frozen=True)
class PartChecksum:
    """A part's ``Upload-Checksum`` (sha256 only)."""

    digest: bytes


def parse_checksum(header: str | None) -> PartChecksum | None:
    """``Upload-Checksum: sha256 <base64>`` → the digest; other algorithms are refused."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm.lower() != "sha256":
        raise UnsupportedChecksumError(
            f"checksum algorithm {algorithm!r:.40} is not supported; use sha256"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("Upload-Checksum: the digest is not base64") from None
    if len(digest) != 32:
        raise BadRequestError("Upload-Checksum: a sha256 digest is 32 bytes")
    return PartChecksum(digest)


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata: key base64,key2 base64`` → a dict (values as UTF-8 text)."""
    if not header:
        return {}
    if len(header) > _MAX_METADATA_BYTES:
        raise BadRequestError(f"Upload-Metadata is over {_MAX_METADATA_BYTES} bytes")
    metadata: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key or key in metadata:
            raise BadRequestError(f"Upload-Metadata: empty or repeated key {key!r:.40}")
        try:
            text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise BadRequestError(
                f"Upload-Metadata: the value of {key!r:.40} is not base64"
            ) from None
        if key in _METADATA_KEYS:
            metadata[key] = text
    return metadata


def create_upload(
    uploads: ResumableUploads,
    *,
    owner: str,
    length: int,
    metadata: dict[str, str],
    max_bytes: int,
) -> UploadInfo:
    """Create an empty upload of ``length`` bytes.

    Raises:
        UploadTooLargeError: ``length`` is over ``max_bytes`` (GRAFT_MAX_UPLOAD_BYTES).
        TooManyUploadsError: the owner holds too many unfinished uploads.
    """
    if length > max_bytes:
        raise UploadTooLargeError(
            f"Upload-Length {length} exceeds GRAFT_MAX_UPLOAD_BYTES ({max_bytes} bytes)",
            limit=max_bytes,
        )
    if length == 0:
        raise BadRequestError("an empty file is not a checkpoint (Upload-Length: 0)")
    return uploads.create(owner, length, metadata)


def begin_part(
    uploads: ResumableUploads, info: UploadInfo, *, offset: int, checksum: PartChecksum | None
) -> PartWriter:
    """Open the upload for a part starting at ``offset`` (call while holding its lock).

    Raises:
        OffsetMismatchError: ``offset`` is not the upload's offset (409).
        ConflictError: the upload is already complete.
    """
    if info.complete:
        raise OffsetMismatchError(f"upload {info.id} is complete; nothing more can be appended")
    if offset != info.offset:
        raise OffsetMismatchError(
            f"Upload-Offset is {offset} but upload {info.id} holds {info.offset} bytes; "
            "HEAD it and resume from there"
        )
    return uploads.open_part(info, part_digest=checksum is not None)


async def finish_part(
    uploads: ResumableUploads,
    info: UploadInfo,
    writer: PartWriter,
    *,
    checksum: PartChecksum | None,
    intact: bool,
) -> bool:
    """Keep (or drop) the bytes a PATCH wrote.

    Args:
        checksum: the part's ``Upload-Checksum``; a mismatch drops the part (460).
        intact: whether the body arrived whole; a cut part without a checksum is kept up to
            the last byte received (tus core), one with a checksum is dropped.

    Returns:
        Whether the upload now holds all its bytes (then call :func:`complete_upload`).

    Raises:
        ChecksumMismatchError: the part did not hash to its checksum.
    """
    if checksum is not None and not (intact and _matches(writer, checksum)):
        await to_thread.run_sync(writer.rollback)
        uploads.forget_hash(info.id)
        if intact:
            raise ChecksumMismatchError(
                f"the part at offset {writer.start} does not match its Upload-Checksum; it "
                "was discarded: send it again"
            )
        return False
    await to_thread.run_sync(uploads.commit_part, info, writer)
    return info.offset == info.length


def _matches(writer: PartWriter, checksum: PartChecksum) -> bool:
    digest = writer.part_digest()
    return digest is not None and hmac.compare_digest(digest, checksum.digest)


async def complete_upload(
    session: Session,
    store: BlobStore,
    inspector: InspectorPool,
    uploads: ResumableUploads,
    info: UploadInfo,
    writer: PartWriter,
) -> tuple[Checkpoint, bool]:
    """Make the checkpoint record of a complete upload, exactly as ``POST /v1/checkpoints``.

    The data file is inspected in a sandboxed child and published under the sha256 carried
    across parts (renamed into the file store; with S3, its parts, sent as they arrived,
    are completed into the blob); the upload keeps the checkpoint's id
    (``GET /v1/uploads/{id}``) until it expires. A file the engine refuses removes the
    upload (nothing is stored).

    Returns:
        ``(checkpoint, created)``.
    """
    entry = info.metadata.get("entry") or "auto"
    # A store that assembles blobs from parts (S3) holds every byte already but the last
    # ones that could not go yet; the file itself is then published as those parts.
    writer.assembled = await to_thread.run_sync(uploads.finish_parts, info)
    try:
        checkpoint, created = await checkpoints_service.register_upload(
            session, store, inspector, [writer], owner=info.owner, entry=entry
        )
    except GraftError as exc:
        if exc.status < 500:
            await to_thread.run_sync(uploads.remove, info.id)
        raise
    info.checkpoint_id = str(checkpoint.id)
    info.created_checkpoint = created
    info.parts = None  # completed (or aborted, for bytes stored before)
    await to_thread.run_sync(uploads.save, info)
    uploads.forget_hash(info.id)
    return checkpoint, created
