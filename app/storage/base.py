"""The blob store interface: immutable blobs addressed by their sha256.

Every implementation keeps two promises. Content addressing: a blob's name is the sha256 of its
bytes, so publishing the same bytes twice stores one blob. Atomic publication: bytes are written
somewhere private first, checked, and only then made visible under their content address, so a
reader never sees a half-written blob.

Writers stage bytes in local temp space (:class:`~app.storage.staging.Scratch`) whatever the
store: uploads and engine output are files on this host first, and :meth:`BlobStore.publish`
moves them into the store.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import InternalError
from app.storage.staging import Scratch, StagedFile

__all__ = ["BlobInfo", "BlobIntegrityError", "BlobStore", "PartsUpload", "check_digest"]

_HEX = frozenset("0123456789abcdef")
_CHUNK = 1024 * 1024


def check_digest(sha256: str) -> str:
    """Return ``sha256`` if it is a lowercase sha256 hex digest, else raise ``ValueError``.

    Digests become file names and object keys, so nothing else may pass (``../`` above all).
    """
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class BlobIntegrityError(InternalError, OSError):
    """Bytes did not match the digest or size they were published or read under (an
    ``internal-error`` to clients; an ``OSError`` to storage code, as any failed read)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob, as listings return it.

    Attributes:
        sha256: its digest (and name).
        size: its length in bytes.
        modified: when it was last published, in seconds since the epoch.
    """

    sha256: str
    size: int
    modified: float


@dataclass
class PartsUpload:
    """A blob assembled in the store from parts sent as they arrive (an S3 multipart
    upload), for uploads that come in pieces over several requests (tus).

    Plain data, so it can be saved between requests (``as_dict`` / ``of``).

    Attributes:
        key: where the parts are assembled (never a content address).
        upload_id: the store's id of the assembly.
        parts: ``[number, etag, size]`` of each part sent, in order.
        sent: bytes sent so far (the sum of the sizes).
    """

    key: str
    upload_id: str
    parts: list[list[Any]] = field(default_factory=list)
    sent: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "upload_id": self.upload_id,
            "parts": self.parts,
            "sent": self.sent,
        }

    @classmethod
    def of(cls, raw: dict[str, Any]) -> PartsUpload:
        return cls(raw["key"], raw["upload_id"], [list(p) for p in raw["parts"]], raw["sent"])


class BlobStore(abc.ABC):
    """Immutable blobs addressed by sha256, with local temp space to stage them in.

    Args:
        scratch: the local temp space for uploads and work folders on this host.
    """

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch

    # --- lifecycle ------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create what the store needs locally (its temp space, a local layout)."""
        self.scratch.ensure()

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``OSError`` unless the store is reachable and writable (readiness)."""

    def cleanup_orphans(self) -> int:
        """Remove temp entries whose writer is gone. Returns how many."""
        return self.scratch.cleanup_orphans()

    # --- writing --------------------------------------------------------------------------

    def stage(self, directory: Path | None = None, name: str | None = None) -> StagedFile:
        """Open a new local temp file to stream bytes into, hashed as they are written.

        Args:
            directory: a :meth:`workdir` to create it in (default: the temp space).
            name: its file name there (engines sniff formats, but names help people).
        """
        return self.scratch.stage(directory, name)

    def workdir(self) -> contextlib.AbstractContextManager[Path]:
        """A private local temp directory, removed on exit."""
        return self.scratch.workdir()

    @abc.abstractmethod
    def publish(self, staged: Path, sha256: str) -> None:
        """Move a closed local file into the store under ``sha256``, atomically.

        The local file is consumed. If the blob already exists the file is dropped: same
        digest, same bytes.

        Args:
            staged: a local file (from :meth:`stage` or inside a :meth:`workdir`).
            sha256: its digest, as computed while it was written.
        """

    # --- blobs sent in parts (resumable uploads) -----------------------------------------

    #: The smallest part :meth:`send_part` takes, bar the last one.
    min_part_size = 0

    def open_parts(self, name: str) -> PartsUpload | None:
        """Start assembling a blob from parts in the store, or ``None`` when the store has
        no such thing (the file store: a staged file is renamed into place, nothing to send).

        Args:
            name: a unique name for the assembly (the resumable upload's id).
        """
        return None

    def send_part(self, upload: PartsUpload, path: Path, start: int, stop: int) -> None:
        """Send bytes ``[start, stop)`` of the local file ``path`` as the next part of
        ``upload`` (which records it)."""
        raise NotImplementedError(f"{self!r} does not assemble blobs from parts")

    def publish_parts(self, upload: PartsUpload, sha256: str, size: int) -> None:
        """Publish the assembled parts under ``sha256`` (its digest, computed as the bytes
        arrived), atomically, as :meth:`publish` does a file.

        Raises:
            BlobIntegrityError: the store holds another size than ``size``; nothing is
                published.
        """
        raise NotImplementedError(f"{self!r} does not assemble blobs from parts")

    def abort_parts(self, upload: PartsUpload) -> None:  # noqa: B027 (optional: no parts)
        """Drop an assembly and its parts (an upload terminated, expired or refused)."""

    def ingest(self, path: Path) -> tuple[str, int]:
        """Hash and publish a local file written elsewhere (e.g. engine output).

        Returns:
            ``(sha256, size)``.
        """
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        self.publish(path, sha)
        return sha, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` as a blob. Returns ``(sha256, size)``."""
        staged = self.stage()
        try:
            staged.write(data)
            sha = staged.close()
            self.publish(staged.path, sha)
        except BaseException:
            staged.discard()
            raise
        return sha, staged.size

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob if present (callers make sure nothing references it)."""

    def collect(self, sha256: str, *, claimed_since: float, referenced: Callable[[], bool]) -> bool:
        """Delete a blob nobody claims: not published at or after ``claimed_since`` (every
        publish refreshes the date) and not ``referenced()`` (asked last, just before).

        This default checks, then deletes; :class:`~app.storage.file.FileBlobStore` moves the
        blob aside first, which leaves a publish no window to miss.

        Returns:
            Whether it was deleted.
        """
        modified = self.modified(sha256)
        if modified is None or modified >= claimed_since or referenced():
            return False
        self.delete(sha256)
        return True

    # --- reading --------------------------------------------------------------------------

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""

    @abc.abstractmethod
    def blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob, in no particular order."""

    @abc.abstractmethod
    def modified(self, sha256: str) -> float | None:
        """When the blob was last published (or re-published), or None if it is absent."""

    @abc.abstractmethod
    def link_into(self, sha256: str, dest: Path) -> None:
        """Make the blob's bytes a local file at ``dest`` (a link, a copy or a download).

        Raises:
            FileNotFoundError: no such blob.
            BlobIntegrityError: the bytes read did not hash to ``sha256``.
        """

    @abc.abstractmethod
    def iter_range(
        self, sha256: str, start: int, stop: int, *, chunk_size: int = _CHUNK
    ) -> Iterator[bytes]:
        """Stream bytes ``[start, stop)`` of a blob in chunks, never all in memory.

        Args:
            start: first byte, from 0.
            stop: one past the last byte; at most the blob's size.
            chunk_size: the largest chunk yielded.
        """

    def local_path(self, sha256: str) -> Path | None:
        """A local file holding the blob, when the store has one (the API can then let the
        server send it directly); ``None`` for remote stores."""
        return None

    def source_url(self, sha256: str, *, expires_seconds: int) -> str | None:
        """A URL that serves the blob (ranged GETs included) without credentials for a
        while, for a sandbox child to read it from; ``None`` when the store has none."""
        return None

    def stream_upload(self, *, expires_seconds: int) -> Any | None:
        """A new upload a sandbox child fills by presigned part URLs and this store
        completes and publishes (an :class:`~app.storage.s3_stream.StreamUpload`); ``None``
        when the store has none (local stores take a local file instead)."""
        return None

    def presigned_url(
        self, sha256: str, *, filename: str, media_type: str, expires_seconds: int = 600
    ) -> str | None:
        """A URL that serves the blob without credentials for a while, when the store can
        make one; ``None`` otherwise.

        Args:
            filename: the name the download should be saved as.
            media_type: the ``Content-Type`` it should be served with.
            expires_seconds: how long the URL works.
        """
        return None
