"""The local blob store: a directory every process of one machine shares.

Blobs live at ``<root>/sha256/<ab>/<hex digest>``. Everything is written first to
``<root>/tmp/<pid>-<random>`` and published atomically: fsync the file, rename it into place,
fsync the directory. A crash therefore leaves at most a temp file, never a half-written blob,
and :meth:`FileBlobStore.cleanup_orphans` removes temp entries whose owning process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from app.storage.base import BlobInfo, BlobStore, check_digest
from app.storage.staging import Scratch, fsync_dir

__all__ = ["FileBlobStore"]

logger = logging.getLogger(__name__)


class FileBlobStore(BlobStore):
    """A directory of immutable blobs addressed by sha256.

    Args:
        root: the store's directory; its ``tmp/`` is the temp space, on the same file system
            so that publication is a rename.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.blob_dir = self.root / "sha256"
        super().__init__(Scratch(self.tmp_dir))

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def ensure(self) -> None:
        """Create the directory layout."""
        super().ensure()
        self.blob_dir.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """Raise ``OSError`` unless the store is present and writable (readiness)."""
        self.scratch.check()
        if not self.blob_dir.is_dir():
            raise OSError(f"{self.blob_dir} is not a directory")

    def path(self, sha256: str) -> Path:
        """Where the blob with this digest lives (it may not exist)."""
        check_digest(sha256)
        return self.blob_dir / sha256[:2] / sha256

    def local_path(self, sha256: str) -> Path | None:
        """The blob's file, if stored."""
        path = self.path(sha256)
        return path if path.is_file() else None

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self.path(sha256).is_file()

    def publish(self, staged: Path, sha256: str) -> None:
        """Rename a local file to its content address atomically (fsynced first)."""
        dest = self.path(sha256)
        if dest.is_file():
            # Fresh again: collection spares young blobs whose record may be in flight.
            try:
                os.utime(dest)
            except FileNotFoundError:
                pass  # collected in between: publish this copy instead
            else:
                staged.unlink(missing_ok=True)
                return
        # Engine output arrives unsynced; the rename must not outrun the bytes.
        with staged.open("rb") as fh:
            os.fsync(fh.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)
        fsync_dir(dest.parent)

    def link_into(self, sha256: str, dest: Path) -> None:
        """Hard-link the blob to ``dest`` (a copy across file systems)."""
        src = self.path(sha256)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def iter_range(
        self, sha256: str, start: int, stop: int, *, chunk_size: int = 1024 * 1024
    ) -> Iterator[bytes]:
        """Stream bytes ``[start, stop)`` of the blob."""
        with self.path(sha256).open("rb") as fh:
            fh.seek(start)
            left = stop - start
            while left > 0 and (chunk := fh.read(min(chunk_size, left))):
                left -= len(chunk)
                yield chunk

    def blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob."""
        if not self.blob_dir.is_dir():
            return
        for folder in self.blob_dir.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if len(path.name) != 64:
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                yield BlobInfo(path.name, stat.st_size, stat.st_mtime)

    def modified(self, sha256: str) -> float | None:
        """The blob's modification time (refreshed by every publish), or None."""
        try:
            return self.path(sha256).stat().st_mtime
        except FileNotFoundError:
            return None

    def collect(self, sha256: str, *, claimed_since: float, referenced: Callable[[], bool]) -> bool:
        """Delete a blob nobody claims (see :meth:`BlobStore.collect`), race-free.

        The blob is first renamed into the temp space, then its date and its references are
        checked. A publish that refreshed it before the move shows in the date, and it is put
        back; a publish after the move finds no blob and publishes its own copy.
        """
        path = self.path(sha256)
        try:
            if path.stat().st_mtime >= claimed_since:
                return False
            trash = self.scratch.name("gc")
            path.rename(trash)
        except FileNotFoundError:
            return False
        if trash.stat().st_mtime >= claimed_since or referenced():
            with contextlib.suppress(FileExistsError):  # published again meanwhile: same bytes
                os.link(trash, path)
            trash.unlink()
            return False
        trash.unlink()
        return not path.exists()  # published anew while aside: that copy stays

    def delete(self, sha256: str) -> None:
        """Remove a blob (callers make sure nothing references it)."""
        self.path(sha256).unlink(missing_ok=True)
