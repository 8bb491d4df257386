"""What every reader shares: the reader protocol, size limits, and exact reads of byte ranges."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES
from app.engine.readers.unpickler import TensorRef, check_tree

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_EXPANSION",
    "MAX_HEADER_BYTES",
    "MAX_ZIP_MEMBERS",
    "FileWindow",
    "Parsed",
    "Reader",
    "StorageFileReader",
    "check_root",
    "read_exact",
    "readinto_exact",
    "tensor_from_bytes",
]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors header / data.pkl / legacy pickle cap
MAX_ZIP_MEMBERS = 1_000_000
# Tensor views may declare at most this many times the file's bytes (tied weights and
# transposed views legitimately declare some bytes twice; stride-0 bombs declare millions).
MAX_EXPANSION = 16


class Reader(Protocol):
    """What every format's reader answers: parsed descriptors now, one tensor's bytes on request."""

    format: str
    parsed: Parsed

    def read(self, handle: Any) -> torch.Tensor: ...

    def storage_id(self, handle: Any) -> tuple[str, ...]: ...

    def byte_range(self, handle: Any) -> tuple[Path, int, int] | None: ...

    def close(self) -> None: ...


@dataclass
class Parsed:
    """What a reader found: the top-level object, tensors as descriptors (TensorRef/TensorInfo)."""

    root: Any
    metadata: dict[str, str] = field(default_factory=dict)


def tensor_from_bytes(buf: bytearray, ref: TensorRef) -> torch.Tensor:
    import torch

    dtype = getattr(torch, ref.dtype)
    flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
    if not ref.shape or all(s > 0 for s in ref.shape):
        return flat.as_strided(ref.shape, ref.stride).contiguous()
    return torch.empty(ref.shape, dtype=dtype)


def read_exact(f: Any, offset: int, size: int, what: str) -> bytearray:
    buf = bytearray(size)
    readinto_exact(f, offset, memoryview(buf), what)
    return buf


def readinto_exact(f: Any, offset: int, view: memoryview, what: str) -> None:
    """Fill ``view`` from ``offset`` of the open file ``f``, however the reads split.

    Raises:
        UnreadableCheckpointError: the file ends first (``what`` names the piece).
    """
    f.seek(offset)
    got, size = 0, len(view)
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            raise UnreadableCheckpointError(f"truncated file: {what} ends early")
        got += n


def check_root(root: Any, file_size: int) -> None:
    """Depth, node and element caps on an unpickled root, walked without recursion."""
    check_tree(root, max_tensor_bytes=max(file_size * MAX_EXPANSION, 1 << 20))


class RangedFile(io.RawIOBase):
    """A seekable, read-only file whose bytes come from :meth:`read_at` (its length is
    :attr:`length`): the position and ``readinto`` bookkeeping, once, for every such view."""

    length: int

    def __init__(self) -> None:
        super().__init__()
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = self.read_at(self._pos, memoryview(buffer).cast("B"))
        self._pos += n
        return n

    def read_at(self, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset`` as far as the file goes; returns the bytes read."""
        raise NotImplementedError


class FileWindow(RangedFile):
    """A byte range of a file seen as a whole file (a ``torch.save`` zip inside a DCP shard)."""

    def __init__(self, file: io.BufferedReader, start: int, length: int) -> None:
        super().__init__()
        self._file, self._start, self.length = file, start, length

    def read_at(self, offset: int, view: memoryview) -> int:
        n = min(len(view), self.length - offset)
        if n <= 0:
            return 0
        self._file.seek(self._start + offset)
        return self._file.readinto(view[:n]) or 0

    def close(self) -> None:
        self._file.close()
        super().close()


class StorageFileReader:
    """Shared by the zip and legacy readers: storages are byte ranges of one file (or of a
    window of one, ``(start, length)``)."""

    format = "torch"

    def __init__(self, path: Path, window: tuple[int, int] | None = None) -> None:
        self._path = path
        raw = path.open("rb")
        self._start = window[0] if window else 0
        self._file: BinaryIO = FileWindow(raw, *window) if window else raw  # type: ignore[assignment]
        self._size = window[1] if window else os.fstat(raw.fileno()).st_size
        self._storage_offsets: dict[str, int] = {}  # storage key -> byte offset in the file

    def byte_range(self, handle: TensorRef) -> tuple[Path, int, int] | None:
        """(file, offset, length) of the tensor's bytes in C order, if they lie so in the file."""
        expected = 1
        for size, stride in zip(reversed(handle.shape), reversed(handle.stride), strict=True):
            if size != 1 and stride != expected:
                return None
            expected *= size
        itemsize = DTYPE_SIZES[handle.dtype]
        start = self._start + self._storage_offsets[handle.storage.key]
        start += (handle.storage.view_offset + handle.offset) * itemsize
        return self._path, start, expected * itemsize

    def read(self, handle: TensorRef) -> torch.Tensor:
        size = DTYPE_SIZES[handle.dtype]
        start = self._storage_offsets[handle.storage.key]
        start += (handle.storage.view_offset + handle.offset) * size
        buf = read_exact(self._file, start, handle.extent() * size, "a tensor's data")
        return tensor_from_bytes(buf, handle)

    def storage_id(self, handle: TensorRef) -> tuple[str, ...]:
        return (handle.storage.key, str(handle.storage.view_offset + handle.offset))

    def close(self) -> None:
        self._file.close()
