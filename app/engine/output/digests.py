"""Per-tensor digests (BLAKE3) and finiteness, and the byte copier that feeds them; no torch.

Tensors whose bytes pass through unchanged are copied file to file through page-aligned
buffers and hashed on a second thread as they go; verification digests written ranges in
place through mapped windows.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from app.engine.errors import GraftError
from app.engine.output.files import OutputFile

if TYPE_CHECKING:
    import torch

__all__ = [
    "DIGEST_ALGORITHM",
    "ByteCopier",
    "all_finite",
    "hasher",
    "hexdigest",
    "tensor_bytes",
    "tensor_digest",
]

CHUNK = 1 << 20  # page-aligned copy buffer; measured fastest with preadv on this class of disk

VERIFY_WINDOW = 16 << 20  # mapped at a time when verifying a large tensor
VERIFY_MAPPED_FROM = 2 << 20  # smaller tensors are read through the copy buffer

DIGEST_ALGORITHM = "blake3"


def tensor_bytes(t: torch.Tensor) -> memoryview:
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def hasher() -> Any:
    """The per-tensor digest: BLAKE3, cryptographic and ~4x faster than sha256 here (5 GB/s
    against 1.3 GB/s), so digesting every tensor costs a fraction of copying it."""
    return blake3.blake3()


def hexdigest(h: Any) -> str:
    return f"{DIGEST_ALGORITHM}:{h.hexdigest()}"


def tensor_digest(t: torch.Tensor) -> str:
    """``blake3:<hex>`` of a tensor's bytes in C order (what the output file holds)."""
    h = hasher()
    h.update(tensor_bytes(t))
    return hexdigest(h)


class _Digests:
    """Per-tensor digests and finiteness, computed on a second thread from the bytes in flight.

    The copy loop writes a chunk, hands it over and reads the next into another buffer; a
    buffer comes back once hashed. hashlib and numpy release the GIL, so copying and hashing
    overlap on two cores.
    """

    def __init__(self, depth: int = 4) -> None:
        self.buffers = [memoryview(mmap.mmap(-1, CHUNK)) for _ in range(depth)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(depth):
            self._free.put(i)
        self._work: queue.SimpleQueue[tuple[str, str, memoryview, int | None] | None]
        self._work = queue.SimpleQueue()
        self._hashes: dict[str, Any] = {}
        self._nonfinite: dict[str, None] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="graft-digests", daemon=True)
        self._thread.start()

    def take(self) -> int:
        """A free buffer's index (waits while all are being hashed)."""
        return self._free.get()

    def feed(self, key: str, dtype: str, data: memoryview, buffer: int | None = None) -> None:
        """Queue bytes of ``key`` (in order); ``buffer`` is returned to the pool once hashed."""
        self._work.put((key, dtype, data, buffer))

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            key, dtype, data, buffer = item
            try:
                if self._error is None:
                    if key not in self._hashes:
                        self._hashes[key] = hasher()
                    self._hashes[key].update(data)
                    if key not in self._nonfinite and not all_finite(data, dtype):
                        self._nonfinite[key] = None
            except BaseException as exc:  # re-raised in the writer by finish()
                self._error = exc
            finally:
                if buffer is not None:
                    self._free.put(buffer)

    def finish(self, keys: list[str]) -> tuple[dict[str, str], list[str]]:
        """Wait for the queue; return each key's digest and the keys holding NaN or Inf."""
        self._work.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        digests = {k: hexdigest(self._hashes.get(k) or hasher()) for k in keys}
        return digests, list(self._nonfinite)

    def abort(self) -> None:
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()


class ByteCopier:
    """Copies and digests file byte ranges through page-aligned buffers; no torch.

    The digest thread starts on the first copy: a copier that only digests (verification)
    never needs it.
    """

    def __init__(self) -> None:
        self._digests: _Digests | None = None
        self._buffer = memoryview(mmap.mmap(-1, CHUNK))
        self._fds: dict[Path, int] = {}

    @property
    def digests(self) -> _Digests:
        if self._digests is None:
            self._digests = _Digests()
        return self._digests

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def copy(
        self, path: Path, offset: int, length: int, out: OutputFile, key: str, dtype: str
    ) -> None:
        """Copy a range to ``out``; each chunk then goes to the digest thread."""
        digests = self.digests
        done = 0
        while done < length:
            buffer = digests.take()
            view = self._read_into(
                digests.buffers[buffer], path, offset + done, min(CHUNK, length - done)
            )
            out.write_all(view)
            digests.feed(key, dtype, view, buffer)
            done += len(view)

    def _read_into(self, buf: memoryview, path: Path, offset: int, size: int) -> memoryview:
        view = buf[:size]
        got = 0
        while got < size:
            n = os.preadv(self._fd(path), [view[got:]], offset + got)
            if n == 0:
                raise GraftError(f"{path.name} ended early while copying a tensor")
            got += n
        return view

    def digest_range(self, path: Path, offset: int, length: int) -> str:
        """``blake3:<hex>`` of a file range, hashed in place through mapped windows.

        No copy into a buffer, and BLAKE3 spreads each window over every core (measured 3x
        faster than reading 1 MiB at a time into one thread). Windows are unmapped as they go,
        so resident memory stays at one window whatever the tensor's size.
        """
        if length < VERIFY_MAPPED_FROM:
            h = hasher()
            buf = self._buffer
            done = 0
            while done < length:
                view = self._read_into(buf, path, offset + done, min(CHUNK, length - done))
                h.update(view)
                done += len(view)
            return hexdigest(h)
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        fd = self._fd(path)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        end = offset + length
        while start < end:
            size = min(VERIFY_WINDOW, end - start)
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=start) as window:
                view = memoryview(window)
                lo = max(offset - start, 0)
                h.update(view[lo:size])
                view.release()
            start += size
        return hexdigest(h)

    def close(self) -> None:
        # The buffers are left to the garbage collector: a traceback may still hold a slice.
        if self._digests is not None:
            self._digests.abort()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


# Exponent masks of IEEE formats numpy cannot view as floats: all-ones exponent = NaN or Inf.
_NONFINITE_MASKS: dict[str, tuple[str, int]] = {
    "bfloat16": ("<u2", 0x7F80),
    "float8_e5m2": ("u1", 0x7C),
}
_NUMPY_FLOATS = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}


def all_finite(data: memoryview, dtype: str) -> bool:
    """Whether every value of a little-endian buffer of ``dtype`` is finite (no torch)."""
    import numpy as np

    if dtype in _NUMPY_FLOATS:
        values = np.frombuffer(data, dtype=_NUMPY_FLOATS[dtype])
        # One vectorised pass: NaN and ±Inf make the sum non-finite. A finite sum proves every
        # value finite; only a non-finite one (or an overflowing sum) needs the exact check.
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(values.sum()):
                return True
        return bool(np.isfinite(values).all())
    if dtype in _NONFINITE_MASKS:
        code, mask = _NONFINITE_MASKS[dtype]
        bits = np.frombuffer(data, dtype=code)
        return not bool(((bits & mask) == mask).any())
    if dtype == "float8_e4m3fn":  # no infinities; NaN is S.1111.111
        return not bool(((np.frombuffer(data, dtype="u1") & 0x7F) == 0x7F).any())
    return True
