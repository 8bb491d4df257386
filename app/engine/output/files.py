"""Output files: sequential writes with early writeback, and atomic publication.

The output appears atomically (temp file or folder, fsync, rename, fsync of the parent); on
any failure the temp is removed and nothing is left at the output path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from app.engine.output.kernel_copy import KernelCopier

__all__ = ["OutputFile", "atomic_output", "fsync_dir", "rewrite_at", "start_writeback"]


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it into place.

    With ``folder=True`` the temp is a directory (a sharded output) whose files the caller
    writes; an existing folder at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    if not path.parent.is_dir():
        # Name the folder the user gave, not the temp file inside it.
        raise FileNotFoundError(errno.ENOENT, "no such output folder", str(path.parent))
    tmp = path.with_name(f".{path.name}.graft-tmp-{os.getpid()}")
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        for file in tmp.iterdir() if folder else [tmp]:
            with file.open("rb+") as f:
                os.fsync(f.fileno())
        if folder:
            fsync_dir(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.graft-old-{os.getpid()}")
                path.rename(old)
                tmp.rename(path)
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()
            else:
                tmp.rename(path)
        else:
            tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                tmp.unlink()


class OutputFile:
    """An output file written sequentially, with writeback started as it goes.

    Without it every dirty page waits for the final fsync; with it the disk works while the
    copy goes on (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: start, don't wait).
    Writes are positional (``pwrite``), so bytes copied in the kernel and bytes written from
    memory interleave without a file position to keep in step.

    Attributes:
        path: the file.
        position: bytes written so far (the offset of the next write).
    """

    WRITEBACK_EVERY = 64 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb", buffering=0)
        self.fd = self.file.fileno()
        self.position = 0
        self._flushed = 0

    def write_all(self, data: bytes | memoryview) -> None:
        """Append ``data``."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.position + done)
        self._advance(len(view))

    def copy_from(self, copier: KernelCopier, src: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of the open file ``src`` at ``offset``, in the kernel when
        it agrees (see :class:`KernelCopier`)."""
        copier.copy(src, offset, self.fd, self.position, length)
        self._advance(length)

    def _advance(self, n: int) -> None:
        self.position += n
        if self.position - self._flushed >= self.WRITEBACK_EVERY:
            start_writeback(self.fd, self._flushed, self.position - self._flushed)
            self._flushed = self.position

    @property
    def written(self) -> int:
        """Bytes written so far (the same as :attr:`position`)."""
        return self.position

    def close(self) -> None:
        self.file.close()


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd, offset, length: fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a file range back to disk without waiting (Linux; elsewhere nothing)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length)


def _write_all(out: Any, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n:]


def rewrite_at(path: Path, offset: int, data: bytes) -> None:
    """Overwrite ``len(data)`` bytes of ``path`` at ``offset`` in place."""
    with path.open("rb+") as f:
        f.seek(offset)
        _write_all(f, data)
