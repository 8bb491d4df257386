"""Safetensors files: a JSON header checked byte for byte, tensors read lazily by key."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import TooLargeError, UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES, TensorInfo, guess_kind
from app.engine.readers.base import Parsed, readinto_exact
from app.engine.readers.remote import ReadAhead, RemoteBlob

if TYPE_CHECKING:
    import torch

__all__ = ["SAFETENSORS_DTYPES", "SAFETENSORS_MAX_HEADER_BYTES", "SafetensorsReader"]

# The safetensors library's own cap (MAX_HEADER_SIZE): a larger header is one it refuses.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
_INT64_MAX = 2**63 - 1

SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
}


class SafetensorsReader:
    """A safetensors file: every header entry checked against the file before use.

    Args:
        path: the file; for a :class:`RemoteBlob`, its name (what byte ranges are named by).
        remote: the file's bytes when they are not on this host, read through a
            :class:`ReadAhead` (tensors then come from its blocks, not ``safe_open``).
    """

    format = "safetensors"

    def __init__(self, path: Path, remote: RemoteBlob | None = None) -> None:
        self._path = path
        self._remote = ReadAhead(remote) if remote is not None else None
        if self._remote is not None:
            size = self._remote.blob.size
            infos, metadata, self._ranges = self._parse_header(self._remote, size)
        else:
            with path.open("rb") as f:
                infos, metadata, self._ranges = self._parse_header(f, path.stat().st_size)
        self.parsed = Parsed(infos, metadata)
        self._handle: Any = None

    @property
    def remote(self) -> ReadAhead | None:
        """The read-ahead file of a remote source (byte copies read through it), else None."""
        return self._remote

    def byte_range(self, handle: str) -> tuple[Path, int, int] | None:
        start, length = self._ranges[handle]
        return self._path, start, length

    @staticmethod
    def _parse_header(
        f: Any, file_size: int
    ) -> tuple[dict[str, TensorInfo], dict[str, str], dict[str, tuple[int, int]]]:
        if file_size < 8:
            raise UnreadableCheckpointError("truncated safetensors file (no header length)")
        head = bytearray(8)
        readinto_exact(f, 0, memoryview(head), "the header length")
        (n,) = struct.unpack("<Q", head)
        if n > SAFETENSORS_MAX_HEADER_BYTES:
            raise TooLargeError(
                f"safetensors header claims {n} bytes (limit {SAFETENSORS_MAX_HEADER_BYTES}, "
                "as the safetensors library): corrupt"
            )
        if 8 + n > file_size:
            raise UnreadableCheckpointError(
                f"safetensors header claims {n} bytes but the file has {file_size}"
            )
        raw = bytearray(n)
        readinto_exact(f, 8, memoryview(raw), "the header")
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise UnreadableCheckpointError("safetensors header is not valid JSON") from None
        if not isinstance(header, dict):
            raise UnreadableCheckpointError("safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise UnreadableCheckpointError("safetensors __metadata__ must map strings to strings")
        infos: dict[str, TensorInfo] = {}
        spans: list[tuple[int, int, str]] = []
        for key, entry in header.items():
            if not isinstance(entry, dict):
                raise UnreadableCheckpointError(f"safetensors entry {key!r} is not an object")
            dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
            if dtype is None:
                raise UnreadableCheckpointError(
                    f"safetensors entry {key!r} has unknown dtype {entry.get('dtype')!r}"
                )
            shape = entry.get("shape")
            offsets = entry.get("data_offsets")
            if not (
                isinstance(shape, list)
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
                and isinstance(offsets, list)
                and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            ):
                raise UnreadableCheckpointError(f"safetensors entry {key!r} is malformed")
            # The library (and torch) hold sizes as int64: a larger one is a forged header.
            if any(s > _INT64_MAX for s in shape) or math.prod(shape) > _INT64_MAX:
                raise UnreadableCheckpointError(
                    f"safetensors entry {key!r}: shape {shape} does not fit in int64"
                )
            begin, end = offsets
            if end - begin != math.prod(shape) * DTYPE_SIZES[dtype] or begin > end:
                raise UnreadableCheckpointError(
                    f"safetensors entry {key!r}: shape {shape} of {dtype} needs "
                    f"{math.prod(shape) * DTYPE_SIZES[dtype]} bytes but offsets span {end - begin}"
                )
            spans.append((begin, end, key))
            infos[key] = TensorInfo(key, tuple(shape), dtype, guess_kind(key, dtype))
        position = 0
        for begin, end, key in sorted(spans):
            if begin != position:
                raise UnreadableCheckpointError(
                    f"safetensors entry {key!r} overlaps another or leaves a gap at byte {position}"
                )
            position = end
        if 8 + n + position != file_size:
            raise UnreadableCheckpointError(
                f"safetensors data ends at byte {8 + n + position} but the file has {file_size} "
                "bytes (truncated, or trailing bytes)"
            )
        ranges = {key: (8 + n + begin, end - begin) for begin, end, key in spans}
        return infos, metadata, ranges

    def read(self, handle: str) -> torch.Tensor:
        if self._remote is not None:
            return self._read_remote(handle)
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self._path), framework="pt", device="cpu")
        tensor: torch.Tensor = self._handle.get_tensor(handle)
        return tensor

    def storage_id(self, handle: str) -> tuple[str, ...]:
        return (handle,)

    def _read_remote(self, handle: str) -> torch.Tensor:
        import torch

        info = self.parsed.root[handle]
        start, length = self._ranges[handle]
        flat = torch.empty(length, dtype=torch.uint8)
        if length and self._remote is not None:
            readinto_exact(self._remote, start, flat.numpy().data, f"tensor {handle!r}")
        return flat.view(getattr(torch, info.dtype)).reshape(info.shape)

    def close(self) -> None:
        self._handle = None
        if self._remote is not None:
            self._remote.close()
