"""Where resumable uploads live between requests: a folder per upload in the staging area.

``<scratch>/tus/<id>/`` holds ``data`` (the bytes received so far, appended in place) and
``info.json`` (owner, length, offset, metadata, dates, and once complete the checkpoint id),
rewritten atomically after each part is fsynced. Both are files on the store's own staging
file system, so they survive a restart of the server (the per-process temp entries beside
them are swept, this folder is not: see :data:`app.storage.staging.RESUMABLE_DIR`), and
publishing the finished ``data`` file is a rename for the file store.

The running sha256 of each upload is kept in this process, keyed by upload and offset, so
no byte is hashed twice. It is fed on its own thread (:class:`BackgroundHash`), and a part's
answer waits for its bytes to be durable, not hashed: the thread finishes the part's tail
while the client sends the next one (which, or the completion, waits for it). ``hashlib``
state cannot be saved, so after a restart (or when another API process took the previous
part) the bytes already received are hashed once, the first time the upload is appended to
again.

A PATCH holds an exclusive ``flock`` on the upload's ``lock`` file: two parts of one upload
are never written at once, whichever process receives them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.engine.output.files import start_writeback
from app.services.errors import NotFoundError, TooManyUploadsError
from app.services.uploads.errors import UploadBusyError
from app.storage import BlobStore, PartsUpload, StagedFile
from app.storage.staging import BackgroundHash, writev_all

__all__ = ["PartWriter", "ResumableUploads", "UploadInfo"]

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 8 << 20


@dataclass
class UploadInfo:
    """One resumable upload's state (``info.json``).

    Attributes:
        id: the upload's id (32 hex digits).
        owner: who created it; nobody else sees it.
        length: the total size announced at creation (``Upload-Length``).
        offset: bytes received and fsynced so far.
        metadata: ``Upload-Metadata``, decoded (``filename``, ``entry``).
        created: when it was created (seconds since the epoch).
        updated: when a part last arrived.
        checkpoint_id: once complete, the checkpoint record it made.
        created_checkpoint: whether completing it created that record (else: same bytes
            were uploaded before).
        parts: where a store that assembles blobs from parts (S3) holds the bytes sent so
            far (:class:`~app.storage.PartsUpload`, as a dict); ``None`` for the file store.
    """

    id: str
    owner: str
    length: int
    offset: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    checkpoint_id: str | None = None
    created_checkpoint: bool = False
    parts: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.checkpoint_id is not None

    @property
    def filename(self) -> str:
        return self.metadata.get("filename") or "checkpoint"


class PartWriter(StagedFile):
    """A staged file reopened for appending, its running sha256 carried over.

    A :class:`StagedFile` to the code that registers uploads, but self-contained: it keeps
    its own file and digest (none of the base class's state), so the two can change apart.
    Batches are written with ``writev`` by the caller's thread and hashed on a
    :class:`BackgroundHash` thread meanwhile; writeback starts after every batch, so the
    fdatasync that ends the part finds little left to write.

    Args:
        path: the upload's ``data`` file, already cut back to ``offset`` bytes.
        name: the file's name in its checkpoint.
        offset: the bytes already in it.
        hasher: the running sha256 of those bytes, on its thread (which may still be
            hashing the last part's tail: the 204 of a part does not wait for it).
        part_digest: also hash this part on its own (a PATCH with ``Upload-Checksum``).

    Attributes:
        assembled: once the upload is complete, its parts in the store when the store
            assembles blobs from parts (publish them, not the file).
    """

    WRITEBACK_EVERY = 8 << 20
    assembled: PartsUpload | None = None

    def __init__(
        self, path: Path, *, name: str, offset: int, hasher: BackgroundHash, part_digest: bool
    ) -> None:
        self.path = path
        self.name = name
        self.size = offset
        self.start = offset
        self._digest = hasher.digests[0]
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._flushed = offset
        self.part = hashlib.sha256() if part_digest else None
        if self.part is None:
            self._hasher = hasher  # it may still be hashing the previous part's tail
        else:
            hasher.join()
            self._hasher = BackgroundHash(self._digest, self.part)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.write_many([bytes(data)])  # hashed later: a buffer that may change is copied

    def write_many(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append ``chunks`` in ``writev`` calls; they are hashed (and the part, if asked)
        on the hashing thread, so they must not change afterwards."""
        if self._fd is None:
            raise ValueError(f"part writer for {self.path} is closed")
        self.size += writev_all(self._fd, chunks)
        self._hasher.feed(chunks)
        if self.size - self._flushed >= self.WRITEBACK_EVERY:
            start_writeback(self._fd, self._flushed, self.size - self._flushed)
            self._flushed = self.size

    def sync(self) -> None:
        """fdatasync and close the file, keeping the running digest open (and, it may be,
        still hashing)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def close(self) -> str:
        """Make the bytes durable and close; the sha256 of the whole file so far."""
        self.sync()
        self._hasher.join()
        return str(self._digest.hexdigest())

    @property
    def sha256(self) -> str:
        self._hasher.join()
        return str(self._digest.hexdigest())

    def part_digest(self) -> bytes | None:
        """This part's own sha256 (when asked for at opening)."""
        self._hasher.join()
        return None if self.part is None else self.part.digest()

    def carry(self) -> BackgroundHash:
        """The running sha256 for the next part, on a thread left to finish this part's
        tail meanwhile (joined first when this part also had its own digest)."""
        if self.part is None:
            self._hasher.release()
            return self._hasher
        self._hasher.join()
        return BackgroundHash(self._digest)

    def rollback(self) -> None:
        """Drop this part's bytes: cut the file back to where the part began."""
        with contextlib.suppress(BaseException):
            self._hasher.join()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, self.start)

    def discard(self) -> None:
        """Close without keeping anything of this part."""
        self.rollback()


class ResumableUploads:
    """The resumable uploads of one host, in a folder of its staging area.

    Args:
        root: the folder (``<scratch>/tus``); created when the first upload is.
        max_per_owner: most unfinished uploads one owner may hold.
        expiry_seconds: an upload untouched this long is removed by :meth:`expire`.
        store: the blob store; when it assembles blobs from parts (S3), the bytes of each
            part committed go to it at once (:meth:`commit_part`), so completing the upload
            sends nothing more.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_per_owner: int,
        expiry_seconds: float,
        store: BlobStore | None = None,
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.max_per_owner = max_per_owner
        self.expiry_seconds = expiry_seconds
        self._hashes: dict[str, tuple[int, BackgroundHash]] = {}
        self._guard = threading.Lock()

    # --- records --------------------------------------------------------------------------

    def folder(self, upload_id: str) -> Path:
        if not _ID.match(upload_id):
            raise NotFoundError(f"no upload with id {upload_id!r:.80}")
        return self.root / upload_id

    def create(self, owner: str, length: int, metadata: dict[str, str]) -> UploadInfo:
        """Create an empty upload.

        Raises:
            TooManyUploadsError: the owner already holds ``max_per_owner`` unfinished ones.
        """
        held = sum(1 for info in self.infos() if info.owner == owner and not info.complete)
        if held >= self.max_per_owner:
            raise TooManyUploadsError(
                f"{held} unfinished resumable uploads of yours exist (at most "
                f"{self.max_per_owner}: GRAFT_MAX_RESUMABLE_UPLOADS_PER_OWNER); finish or "
                "DELETE one first",
                headers={"Retry-After": "60"},
            )
        info = UploadInfo(id=secrets.token_hex(16), owner=owner, length=length, metadata=metadata)
        folder = self.root / info.id
        folder.mkdir(parents=True)
        (folder / "data").touch()
        self.save(info)
        return info

    def get(self, upload_id: str, *, owner: str | None) -> UploadInfo:
        """One upload; another owner's (or an expired one) answers as if it did not exist."""
        try:
            raw = json.loads((self.folder(upload_id) / "info.json").read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFoundError(f"no upload with id {upload_id!r:.80}") from None
        info = UploadInfo(**raw)
        if owner is not None and info.owner != owner:
            raise NotFoundError(f"no upload with id {upload_id!r:.80}")
        return info

    def save(self, info: UploadInfo) -> None:
        """Write ``info.json`` atomically (temp file, fsync, rename)."""
        folder = self.root / info.id
        temp = folder / f"info.{secrets.token_hex(4)}.tmp"
        with temp.open("w") as fh:
            json.dump(asdict(info), fh)
            fh.flush()
            os.fsync(fh.fileno())
        temp.replace(folder / "info.json")

    def infos(self) -> Iterator[UploadInfo]:
        """Every upload on this host (unreadable folders skipped)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            with contextlib.suppress(Exception):
                yield self.get(folder.name, owner=None)

    def data_path(self, info: UploadInfo) -> Path:
        return self.root / info.id / "data"

    # --- parts ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, upload_id: str) -> Iterator[None]:
        """Hold the upload's lock while a part is received.

        Raises:
            UploadBusyError: another request holds it (409).
        """
        path = self.folder(upload_id) / "lock"
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        except FileNotFoundError:
            raise NotFoundError(f"no upload with id {upload_id!r:.80}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise UploadBusyError(
                    f"upload {upload_id} is receiving another PATCH; retry once it ends"
                ) from None
            yield
        finally:
            os.close(fd)

    def open_part(self, info: UploadInfo, *, part_digest: bool) -> PartWriter:
        """Reopen the upload's data at its offset, with the running digest of what it holds
        (kept from the last part, or hashed once from disk after a restart)."""
        path = self.data_path(info)
        if path.stat().st_size != info.offset:  # bytes of a part that never committed
            os.truncate(path, info.offset)
        with self._guard:
            cached = self._hashes.pop(info.id, None)
        if cached is not None and cached[0] == info.offset:
            hasher = cached[1]
        else:
            hasher = BackgroundHash(_hash_prefix(path, info.offset))
        return PartWriter(
            path, name=info.filename, offset=info.offset, hasher=hasher, part_digest=part_digest
        )

    def commit_part(self, info: UploadInfo, writer: PartWriter) -> None:
        """Make the bytes written durable and advance the offset; keep the running digest.

        With a store that assembles blobs from parts, the bytes not sent yet go to it as one
        part (a PATCH's bytes, or several short PATCHes' together once they reach the
        store's smallest part); a failure to send leaves them for the next part, or for
        :meth:`finish_parts`.
        """
        writer.sync()
        info.offset = writer.size
        info.updated = time.time()
        try:
            self._send_parts(info, final=False)
        except Exception as exc:  # the bytes are durable here; sent with a later part
            logger.warning("upload %s: part not sent to %r yet: %s", info.id, self.store, exc)
        self.save(info)
        with self._guard:
            self._hashes[info.id] = (info.offset, writer.carry())

    def finish_parts(self, info: UploadInfo) -> PartsUpload | None:
        """Send what is left of a complete upload to a store that assembles blobs from
        parts; its parts there (``None``: the store takes the file itself)."""
        self._send_parts(info, final=True)
        if info.parts is None:
            return None
        self.save(info)
        return PartsUpload.of(info.parts)

    def _send_parts(self, info: UploadInfo, *, final: bool) -> None:
        if self.store is None:
            return
        parts = PartsUpload.of(info.parts) if info.parts else self.store.open_parts(info.id)
        if parts is None:
            return
        pending = info.offset - parts.sent
        if pending > 0 and (final or pending >= self.store.min_part_size):
            try:
                self.store.send_part(parts, self.data_path(info), parts.sent, info.offset)
            finally:
                info.parts = parts.as_dict()  # the parts that did go, whatever happened
        info.parts = parts.as_dict()

    def forget_hash(self, upload_id: str) -> None:
        with self._guard:
            cached = self._hashes.pop(upload_id, None)
        if cached is not None:
            with contextlib.suppress(BaseException):
                cached[1].join()

    # --- ends -----------------------------------------------------------------------------

    def remove(self, upload_id: str) -> None:
        """Delete an upload's folder and bytes, its parts in the store included
        (termination, expiry, a refused file)."""
        self.forget_hash(upload_id)
        if self.store is not None:
            with contextlib.suppress(NotFoundError):
                info = self.get(upload_id, owner=None)
                if info.parts and not info.complete:
                    self.store.abort_parts(PartsUpload.of(info.parts))
        shutil.rmtree(self.folder(upload_id), ignore_errors=True)

    def expires_at(self, info: UploadInfo) -> float:
        return info.updated + self.expiry_seconds

    def expire(self, now: float | None = None) -> int:
        """Remove uploads (finished or not) untouched for ``expiry_seconds``; count them."""
        now = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            try:
                info = self.get(folder.name, owner=None)
                stale = self.expires_at(info) <= now
            except NotFoundError:  # a folder without its info: a create that crashed
                stale = folder.stat().st_mtime + self.expiry_seconds <= now
            if stale and self._remove_idle(folder.name):
                removed += 1
        if removed:
            logger.info("expired %d abandoned resumable upload(s)", removed)
        return removed

    def _remove_idle(self, upload_id: str) -> bool:
        """Remove an upload unless a PATCH holds it (a part still arriving is not abandoned,
        however long it takes); whether it was removed."""
        try:
            with self.locked(upload_id):
                self.remove(upload_id)
        except (UploadBusyError, NotFoundError):
            return False
        return True


def _hash_prefix(path: Path, length: int) -> Any:
    """The sha256 of the first ``length`` bytes of ``path``."""
    digest = hashlib.sha256()
    if length:
        logger.info("rehashing %d bytes of %s (the running digest was not in memory)", length, path)
    left = length
    with path.open("rb") as fh:
        while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest
