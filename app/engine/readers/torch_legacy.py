"""The pre-1.6 torch format: one pickle stream followed by the raw storages."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES
from app.engine.readers.base import Parsed, StorageFileReader, check_root, read_exact
from app.engine.readers.unpickler import StorageRef, load_restricted

__all__ = ["LegacyReader"]

_PICKLE_MAGIC = 0x1950A86A20F9469CFC6C
_PICKLE_PROTOCOL = 1001


class LegacyReader(StorageFileReader):
    """The pre-1.6 stream: magic, protocol, sys info, the object, storage keys, raw storages."""

    format = "torch-legacy"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.parsed = self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self) -> Parsed:
        f = self._file
        file_size = os.fstat(f.fileno()).st_size
        magic = load_restricted(f)
        if magic != _PICKLE_MAGIC:
            raise UnreadableCheckpointError(
                "a plain pickle, not a PyTorch checkpoint (no torch.save magic number)"
            )
        if load_restricted(f) != _PICKLE_PROTOCOL:
            raise UnreadableCheckpointError("unsupported legacy protocol version")
        sys_info = load_restricted(f)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise UnreadableCheckpointError("big-endian checkpoints are not supported")
        storages: dict[str, StorageRef] = {}
        root = load_restricted(f, storages=storages)
        keys = load_restricted(f)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise UnreadableCheckpointError("legacy checkpoint has a malformed storage table")
        offset = f.tell()
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise UnreadableCheckpointError(f"storage {key!r} is listed but never used")
            count_bytes = read_exact(f, offset, 8, f"storage {key!r}")
            (count,) = struct.unpack("<q", count_bytes)
            nbytes = count * DTYPE_SIZES[storage.dtype]
            if count != storage.numel or offset + 8 + nbytes > file_size:
                raise UnreadableCheckpointError(
                    f"storage {key!r} declares {count} elements but the file holds fewer "
                    "(truncated or forged)"
                )
            self._storage_offsets[key] = offset + 8
            offset += 8 + nbytes
        missing = set(storages) - set(self._storage_offsets)
        if missing:
            raise UnreadableCheckpointError(f"storages {sorted(missing)[:3]} have no data")
        check_root(root, file_size)
        return Parsed(root)
