"""Content-addressed local blob store.

Blobs live at ``<root>/sha256/<ab>/<hex digest>``. Everything is written first to
``<root>/tmp/<pid>-<random>`` and published atomically: fsync the file, rename it into place,
fsync the directory. A crash therefore leaves at most a temp file, never a half-written blob,
and :meth:`BlobStore.cleanup_orphans` removes temp entries whose owning process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.engine.output.files import fsync_dir

__all__ = ["BlobStore", "StagedFile"]

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StagedFile:
    """A temp file being written, hashed in the same pass.

    Attributes:
        path: where the bytes are staged.
        size: bytes written so far.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._fh: BinaryIO | None = path.open("xb")

    def write(self, data: bytes) -> None:
        """Append ``data`` to the file and the running digest."""
        if self._fh is None:
            raise ValueError(f"staged file {self.path} is closed")
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> str:
        """Flush and fsync the file; return its sha256 hex digest."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and delete the temp file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


class BlobStore:
    """A directory of immutable blobs addressed by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.blob_dir = self.root / "sha256"

    def ensure(self) -> None:
        """Create the directory layout."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """Raise ``OSError`` unless the store is present and writable (readiness)."""
        probe = self._temp_name("probe")
        probe.write_bytes(b"")
        probe.unlink()
        if not self.blob_dir.is_dir():
            raise OSError(f"{self.blob_dir} is not a directory")

    def _temp_name(self, tag: str) -> Path:
        return self.tmp_dir / f"{os.getpid()}-{tag}-{secrets.token_hex(8)}"

    def path(self, sha256: str) -> Path:
        """Where the blob with this digest lives (it may not exist)."""
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blob_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def stage(self, directory: Path | None = None, name: str | None = None) -> StagedFile:
        """Open a new temp file to stream bytes into.

        Args:
            directory: a :meth:`workdir` to create it in (default: the temp directory).
            name: its file name there (engines sniff formats, but names help people).
        """
        if directory is None:
            return StagedFile(self._temp_name("upload"))
        return StagedFile(directory / (name or secrets.token_hex(8)))

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A private temp directory inside the store, removed on exit."""
        path = self._temp_name("work")
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, staged: Path, sha256: str) -> Path:
        """Move an fsynced temp file to its content address atomically.

        If the blob already exists the temp file is dropped: same digest, same bytes.

        Returns:
            The blob's path.
        """
        dest = self.path(sha256)
        if dest.is_file():
            staged.unlink(missing_ok=True)
            # Fresh again: the start-up sweep spares young blobs whose record may be in flight.
            os.utime(dest)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)
        fsync_dir(dest.parent)
        return dest

    def ingest(self, path: Path) -> tuple[str, int]:
        """Hash and publish a file written elsewhere in the store (e.g. engine output).

        Returns:
            ``(sha256, size)``.
        """
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            os.fsync(fh.fileno())
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

    def link_into(self, sha256: str, dest: Path) -> None:
        """Make the blob visible at ``dest`` (hard link; a copy across file systems)."""
        src = self.path(sha256)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def blobs(self) -> Iterator[tuple[str, Path]]:
        """Every stored blob as ``(sha256, path)``."""
        if not self.blob_dir.is_dir():
            return
        for folder in self.blob_dir.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if len(path.name) == 64 and path.is_file():
                    yield path.name, path

    def delete(self, sha256: str) -> None:
        """Remove a blob (callers make sure nothing references it)."""
        self.path(sha256).unlink(missing_ok=True)

    def cleanup_orphans(self) -> int:
        """Remove temp entries left by processes that no longer run. Returns how many."""
        self.ensure()
        removed = 0
        for entry in self.tmp_dir.iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.info("removed %d orphan temp entries from %s", removed, self.tmp_dir)
        return removed
