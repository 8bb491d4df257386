"""Local temp space: staged files hashed as they are written, and private work folders.

Every entry is named ``<pid>-<tag>-<random>`` so that :meth:`Scratch.cleanup_orphans` can tell
the leftovers of dead processes (a ``kill -9`` mid-upload) from the work of live ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from app.engine.output.files import fsync_dir, start_writeback

Buffer = bytes | bytearray | memoryview

__all__ = [
    "RESUMABLE_DIR",
    "BackgroundHash",
    "Scratch",
    "StagedFile",
    "fsync_dir",
    "pid_alive",
    "writev_all",
]

logger = logging.getLogger(__name__)

# Resumable (tus) uploads outlive the process that received them: their folder is never swept
# as an orphan (``app.services.uploads`` expires them instead).
RESUMABLE_DIR = "tus"


def writev_all(fd: int, chunks: Sequence[Buffer]) -> int:
    """Write every byte of ``chunks`` to ``fd`` with ``writev`` (no join into one buffer
    first), however the kernel splits the writes; return how many bytes that was."""
    views = [memoryview(c) for c in chunks if len(c)]
    size = sum(v.nbytes for v in views)
    while views:
        n = os.writev(fd, views[:1024])  # IOV_MAX
        while n and views:
            if n >= views[0].nbytes:
                n -= views.pop(0).nbytes
            else:
                views[0] = views[0][n:]
                n = 0
    return size


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BackgroundHash:
    """sha256 digests fed on their own thread, so hashing costs no wall time beside the
    write: at most :data:`DEPTH` batches wait for it (``hashlib`` releases the GIL).

    Args:
        digests: the hash objects every batch updates (a file's running digest, and a
            part's own when one is asked for).
    """

    DEPTH = 2

    def __init__(self, *digests: Any) -> None:
        self.digests = digests
        self._queue: queue.Queue[Sequence[Buffer] | None] | None = None
        self._thread: threading.Thread | None = None
        self._draining: threading.Thread | None = None
        self._error: BaseException | None = None

    def feed(self, chunks: Sequence[Buffer]) -> None:
        """Hash ``chunks`` later; they must not change afterwards (``bytes``, or views)."""
        if self._queue is None:
            self._wait_drained()  # one thread at a time updates the digests, in order
            self._queue = queue.Queue(maxsize=self.DEPTH)
            self._thread = threading.Thread(target=self._run, name="graft-sha256", daemon=True)
            self._thread.start()
        if self._error is not None:
            raise self._error
        self._queue.put(chunks)  # waits while DEPTH batches are still being hashed

    def _run(self) -> None:
        assert self._queue is not None
        batches = self._queue
        while (chunks := batches.get()) is not None:
            if self._error is not None:
                continue
            try:
                for chunk in chunks:
                    for digest in self.digests:
                        digest.update(chunk)
            except BaseException as exc:  # raised to the writer by join
                self._error = exc

    def release(self) -> None:
        """Let the thread end once it has hashed what it holds, without waiting for it (a
        later :meth:`feed` or :meth:`join` waits, if it is not done by then)."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._draining, self._thread, self._queue = self._thread, None, None

    def join(self) -> None:
        """Wait until every batch fed is hashed (the thread ends; a later batch starts
        another)."""
        self.release()
        self._wait_drained()
        if self._error is not None:
            raise self._error

    def _wait_drained(self) -> None:
        if self._draining is not None:
            self._draining.join()
            self._draining = None


class StagedFile:
    """A temp file being written, hashed in the same pass.

    Batches (:meth:`write_many`) are written by the caller's thread (one ``writev``) while a
    :class:`BackgroundHash` digests the previous ones, so the sha256 costs no wall time
    beside the write. Writeback starts every :data:`WRITEBACK_EVERY` bytes, so the disk
    works while the bytes arrive and :meth:`close`'s fsync finds little left to do.

    Attributes:
        path: where the bytes are staged.
        name: the file's name in its checkpoint (a client's name is only ever this, never a
            path component); defaults to the path's.
        size: bytes written so far.
    """

    WRITEBACK_EVERY = 64 << 20

    def __init__(self, path: Path, *, name: str | None = None) -> None:
        self.path = path
        self.name = name or path.name
        self.size = 0
        self._hash = hashlib.sha256()
        self._fh: BinaryIO | None = path.open("xb")
        self._flushed = 0
        self._hasher = BackgroundHash(self._hash)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the file and the running digest."""
        if self._fh is None:
            raise ValueError(f"staged file {self.path} is closed")
        self._hasher.join()
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)

    def write_many(self, chunks: Sequence[Buffer]) -> None:
        """Append ``chunks`` in one ``writev`` (no join into one buffer first); the hashing
        thread digests them while the next batch comes in, so they must not change
        afterwards (``bytes``, or views of them)."""
        if self._fh is None:
            raise ValueError(f"staged file {self.path} is closed")
        self._fh.flush()
        fd = self._fh.fileno()
        self.size += writev_all(fd, chunks)
        self._hasher.feed(chunks)
        if self.size - self._flushed >= self.WRITEBACK_EVERY:
            start_writeback(fd, self._flushed, self.size - self._flushed)
            self._flushed = self.size

    def close(self) -> str:
        """Flush and fsync the file; return its sha256 hex digest."""
        self._hasher.join()
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        """The digest of the bytes written so far."""
        self._hasher.join()
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and delete the temp file (idempotent)."""
        with contextlib.suppress(BaseException):
            self._hasher.join()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


class Scratch:
    """A local directory of temp entries owned by live processes.

    Args:
        root: the directory (created by :meth:`ensure`).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        """Create the directory."""
        self.root.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """Raise ``OSError`` unless the directory is writable."""
        probe = self.name("probe")
        probe.write_bytes(b"")
        probe.unlink()

    def name(self, tag: str) -> Path:
        """A fresh entry name owned by this process."""
        return self.root / f"{os.getpid()}-{tag}-{secrets.token_hex(8)}"

    def stage(self, directory: Path | None = None, name: str | None = None) -> StagedFile:
        """Open a new temp file (see :meth:`app.storage.BlobStore.stage`)."""
        if directory is None:
            return StagedFile(self.name("upload"))
        return StagedFile(directory / (name or secrets.token_hex(8)))

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A private temp directory, removed on exit."""
        path = self.name("work")
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def cleanup_orphans(self) -> int:
        """Remove entries left by processes that no longer run. Returns how many."""
        self.ensure()
        removed = 0
        for entry in self.root.iterdir():
            if entry.name == RESUMABLE_DIR:
                continue
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and pid_alive(int(pid_text)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.info("removed %d orphan temp entries from %s", removed, self.root)
        return removed
