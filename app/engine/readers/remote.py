"""A checkpoint file that is not on this host: byte ranges fetched on demand, read ahead.

The caller says how to fetch a range (a ranged GET of an object store, say) with a
:class:`RemoteBlob`; the engine knows nothing of the store. :class:`ReadAhead` turns the
readers' many small reads into a few large fetches: blocks of ``block`` bytes, the next one
fetched on a helper thread while the current one is read, so a sequential pass over the file
costs one request per block and holds at most two blocks in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from app.engine.errors import UnreadableCheckpointError
from app.engine.readers.base import RangedFile

__all__ = ["DEFAULT_BLOCK", "ReadAhead", "RemoteBlob"]

DEFAULT_BLOCK = 32 << 20


@dataclass(frozen=True)
class RemoteBlob:
    """A file held elsewhere, read by ranges.

    Attributes:
        name: its file name (what reports call it).
        size: its length in bytes.
        fetch: ``fetch(offset, length)`` returns exactly those bytes (or raises ``OSError``).
        block: the read-ahead block size in bytes.
        sha256: its digest, when the caller knows it (the source's identity is then never
            hashed here: that would read the whole file once more).
    """

    name: str
    size: int
    fetch: Callable[[int, int], bytes]
    block: int = DEFAULT_BLOCK
    sha256: str | None = None


class ReadAhead(RangedFile):
    """A :class:`RemoteBlob` as a seekable, read-only file, fetched a block at a time.

    A read within the current block is served from memory; one past it takes the block
    fetched ahead, if any, and starts fetching the block after. Random reads cost one
    block fetch each (the readers read a header, then tensors in file order).
    """

    def __init__(self, blob: RemoteBlob) -> None:
        super().__init__()
        self.blob = blob
        self.length = blob.size
        self._start, self._data = 0, b""
        self._ahead: tuple[int, Future[bytes]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-readahead")
        self._lock = threading.Lock()  # readers of several tensors may share the file
        self.fetches = 0  # blocks fetched, for tests and benchmarks

    def read_at(self, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset`` as far as the file goes; returns the bytes read."""
        with self._lock:
            done = 0
            while done < len(view) and offset + done < self.blob.size:
                at = offset + done
                if not self._start <= at < self._start + len(self._data):
                    self._load(at)
                skip = at - self._start
                n = min(len(view) - done, len(self._data) - skip)
                view[done : done + n] = self._data[skip : skip + n]
                done += n
            return done

    def _load(self, at: int) -> None:
        """Make the block holding ``at`` current, and start fetching the one after it."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] <= at < ahead[0] + self.blob.block:
            start, data = ahead[0], ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            start = at
            data = self._fetch(start)
        self._start, self._data = start, data
        following = start + len(data)
        if following < self.blob.size:
            self._ahead = (following, self._pool.submit(self._fetch, following))

    def _fetch(self, start: int) -> bytes:
        length = min(self.blob.block, self.blob.size - start)
        data = self.blob.fetch(start, length)
        if len(data) != length:
            raise UnreadableCheckpointError(
                f"{self.blob.name}: asked for {length} bytes at {start}, got {len(data)}"
            )
        self.fetches += 1
        return data

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        self._pool.shutdown(wait=True)
        self._data = b""
        super().close()
