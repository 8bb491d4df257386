"""The torch zip format (``torch.save`` since 1.6): a stored zip of ``data.pkl`` and storages."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.engine.errors import TooLargeError, UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.meta import DTYPE_SIZES
from app.engine.readers.base import (
    MAX_HEADER_BYTES,
    MAX_ZIP_MEMBERS,
    Parsed,
    StorageFileReader,
    check_root,
    read_exact,
)
from app.engine.readers.unpickler import StorageRef, load_restricted

__all__ = ["ZipReader"]


class ZipReader(StorageFileReader):
    """A ``torch.save`` zip: members stored uncompressed, TorchScript refused."""

    format = "torch-zip"

    def __init__(
        self,
        path: Path,
        window: tuple[int, int] | None = None,
        extra: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        super().__init__(path, window)
        self._extra = extra  # more inert globals for a format's own pickles (Megatron's args)
        try:
            archive = zipfile.ZipFile(self._file)
        except zipfile.BadZipFile as exc:
            self.close()
            raise UnreadableCheckpointError(f"corrupt or truncated zip archive ({exc})") from None
        try:
            self.parsed = self._parse(archive, path)
        except BaseException:
            self.close()
            raise

    def _parse(self, archive: zipfile.ZipFile, path: Path) -> Parsed:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise TooLargeError(f"zip archive has {len(infos)} members (limit {MAX_ZIP_MEMBERS})")
        names = {i.filename for i in infos}
        prefixes = {n.split("/", 1)[0] for n in names}
        if len(prefixes) != 1:
            raise UnreadableCheckpointError(
                "zip archive is not a torch.save checkpoint (members are not under one folder)"
            )
        prefix = prefixes.pop()
        if f"{prefix}/constants.pkl" in names or any(
            n.startswith(f"{prefix}/code/") for n in names
        ):
            raise UnsafeCheckpointError(
                "unsafe checkpoint: this is a TorchScript archive, which carries code; load it "
                "with torch.jit.load in trusted code and save its state_dict() instead"
            )
        pkl_name = f"{prefix}/data.pkl"
        if pkl_name not in names:
            raise UnreadableCheckpointError("zip archive has no data.pkl: not a torch.save file")
        file_size = self._size
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise UnsafeCheckpointError(
                    f"zip member {info.filename!r} is compressed; torch.save stores members "
                    "uncompressed, so Graft refuses to expand it"
                )
            if (
                info.file_size != info.compress_size
                or info.header_offset + info.file_size > file_size
            ):
                raise UnreadableCheckpointError(
                    f"zip member {info.filename!r} does not fit inside the file (truncated?)"
                )
            by_name[info.filename] = info
        byteorder_name = f"{prefix}/byteorder"
        if byteorder_name in names and archive.read(byteorder_name).strip() not in (b"little", b""):
            raise UnreadableCheckpointError("big-endian checkpoints are not supported")
        pkl_info = by_name[pkl_name]
        if pkl_info.file_size > MAX_HEADER_BYTES:
            raise TooLargeError(
                f"data.pkl is {pkl_info.file_size} bytes (limit {MAX_HEADER_BYTES})"
            )
        try:
            pkl = archive.read(pkl_name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UnreadableCheckpointError(f"cannot read data.pkl ({exc})") from None
        storages: dict[str, StorageRef] = {}
        root = load_restricted(pkl, storages=storages, extra=self._extra)
        for key, storage in storages.items():
            member = by_name.get(f"{prefix}/data/{key}")
            if member is None:
                raise UnreadableCheckpointError(f"storage {key!r} has no data member in the zip")
            if storage.numel * DTYPE_SIZES[storage.dtype] > member.file_size:
                raise UnreadableCheckpointError(f"storage {key!r} is larger than its zip member")
            self._storage_offsets[key] = self._member_data_offset(member)
        check_root(root, file_size)
        return Parsed(root)

    def _member_data_offset(self, info: zipfile.ZipInfo) -> int:
        header = read_exact(self._file, info.header_offset, 30, f"zip member {info.filename!r}")
        if header[:4] != b"PK\x03\x04":
            raise UnreadableCheckpointError(f"zip member {info.filename!r} has a bad header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len
