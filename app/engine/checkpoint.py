"""Open a source checkpoint safely and describe its tensors, reading data only on request.

Formats: torch zip (``torch.save`` since 1.6), torch legacy (the pre-1.6 pickle stream),
safetensors, and Hugging Face sharded sets (``*.index.json`` + shards). Pickles are read by
:mod:`app.engine.pickle_reader`, which allows less than ``torch.load(weights_only=True)`` and
never executes anything; tensor bytes are read straight from the file, one tensor at a time,
and always land on the CPU (files saved from CUDA tensors open without a GPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from app.engine.errors import TooLargeError, UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.meta import DTYPE_SIZES, TensorInfo, guess_kind
from app.engine.pickle_reader import StorageRef, TensorRef, check_tree, load_restricted

if TYPE_CHECKING:
    import torch

__all__ = [
    "SAFETENSORS_DTYPES",
    "WRAPPER_PREFIXES",
    "Source",
    "inspect_source",
    "open_source",
    "sha256_file",
]

logger = logging.getLogger(__name__)

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

# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Checked in this order by ``entry: auto`` (SPEC §1): EMA first, then the usual names.
_EMA_ENTRIES = ("model_ema", "state_dict_ema", "ema_state_dict", "ema_model", "ema")
_PLAIN_ENTRIES = ("state_dict", "model", "module", "net", "params")

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors header / data.pkl / legacy pickle cap
MAX_ZIP_MEMBERS = 1_000_000
# Tensor views may declare at most this many times the file's bytes (tied weights and
# transposed views legitimately declare some bytes twice; stride-0 bombs declare millions).
MAX_EXPANSION = 16
_PICKLE_MAGIC = 0x1950A86A20F9469CFC6C
_PICKLE_PROTOCOL = 1001
_COPY_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Readers: one per format, all answering the same small protocol.
# --------------------------------------------------------------------------------------------


class _Reader(Protocol):
    format: str
    parsed: _Parsed

    def read(self, handle: Any) -> torch.Tensor: ...

    def storage_id(self, handle: Any) -> tuple[str, ...]: ...

    def byte_range(self, handle: Any) -> tuple[Path, int, int] | None: ...

    def close(self) -> None: ...


@dataclass
class _Parsed:
    """What a reader found: the top-level object, tensors as descriptors (TensorRef/TensorInfo)."""

    root: Any
    metadata: dict[str, str] = field(default_factory=dict)


def _tensor_from_bytes(buf: bytearray, ref: TensorRef) -> torch.Tensor:
    import torch

    dtype = getattr(torch, ref.dtype)
    flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
    if not ref.shape or all(s > 0 for s in ref.shape):
        return flat.as_strided(ref.shape, ref.stride).contiguous()
    return torch.empty(ref.shape, dtype=dtype)


def _read_exact(f: Any, offset: int, size: int, what: str) -> bytearray:
    buf = bytearray(size)
    f.seek(offset)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            raise UnreadableCheckpointError(f"truncated file: {what} ends early")
        got += n
    return buf


def _check_root(root: Any, file_size: int) -> None:
    """Depth, node and element caps on an unpickled root, walked without recursion."""
    check_tree(root, max_tensor_bytes=max(file_size * MAX_EXPANSION, 1 << 20))


class _StorageFileReader:
    """Shared by the zip and legacy readers: storages are byte ranges of one file."""

    format = "torch"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: BinaryIO = path.open("rb")
        self._storage_offsets: dict[str, int] = {}  # storage key -> byte offset in the file

    def byte_range(self, handle: TensorRef) -> tuple[Path, int, int] | None:
        """(file, offset, length) of the tensor's bytes in C order, if they lie so in the file."""
        expected = 1
        for size, stride in zip(reversed(handle.shape), reversed(handle.stride), strict=True):
            if size != 1 and stride != expected:
                return None
            expected *= size
        itemsize = DTYPE_SIZES[handle.dtype]
        start = self._storage_offsets[handle.storage.key]
        start += (handle.storage.view_offset + handle.offset) * itemsize
        return self._path, start, expected * itemsize

    def read(self, handle: TensorRef) -> torch.Tensor:
        size = DTYPE_SIZES[handle.dtype]
        start = self._storage_offsets[handle.storage.key]
        start += (handle.storage.view_offset + handle.offset) * size
        buf = _read_exact(self._file, start, handle.extent() * size, "a tensor's data")
        return _tensor_from_bytes(buf, handle)

    def storage_id(self, handle: TensorRef) -> tuple[str, ...]:
        return (handle.storage.key, str(handle.storage.view_offset + handle.offset))

    def close(self) -> None:
        self._file.close()


class _ZipReader(_StorageFileReader):
    format = "torch-zip"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
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

    def _parse(self, archive: zipfile.ZipFile, path: Path) -> _Parsed:
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
        file_size = os.fstat(self._file.fileno()).st_size
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
        root = load_restricted(pkl, storages=storages)
        for key, storage in storages.items():
            member = by_name.get(f"{prefix}/data/{key}")
            if member is None:
                raise UnreadableCheckpointError(f"storage {key!r} has no data member in the zip")
            if storage.numel * DTYPE_SIZES[storage.dtype] > member.file_size:
                raise UnreadableCheckpointError(f"storage {key!r} is larger than its zip member")
            self._storage_offsets[key] = self._member_data_offset(member)
        _check_root(root, file_size)
        return _Parsed(root)

    def _member_data_offset(self, info: zipfile.ZipInfo) -> int:
        header = _read_exact(self._file, info.header_offset, 30, f"zip member {info.filename!r}")
        if header[:4] != b"PK\x03\x04":
            raise UnreadableCheckpointError(f"zip member {info.filename!r} has a bad header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len


class _LegacyReader(_StorageFileReader):
    """The pre-1.6 stream: magic, protocol, sys info, the object, storage keys, raw storages."""

    format = "torch-legacy"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.parsed = self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self) -> _Parsed:
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
            count_bytes = _read_exact(f, offset, 8, f"storage {key!r}")
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
        _check_root(root, file_size)
        return _Parsed(root)


class _SafetensorsReader:
    format = "safetensors"

    def __init__(self, path: Path) -> None:
        self._path = path
        infos, metadata, self._ranges = self._parse_header(path)
        self.parsed = _Parsed(infos, metadata)
        self._handle: Any = None

    def byte_range(self, handle: str) -> tuple[Path, int, int] | None:
        start, length = self._ranges[handle]
        return self._path, start, length

    @staticmethod
    def _parse_header(
        path: Path,
    ) -> tuple[dict[str, TensorInfo], dict[str, str], dict[str, tuple[int, int]]]:
        file_size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UnreadableCheckpointError("truncated safetensors file (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise TooLargeError(
                    f"safetensors header claims {n} bytes (limit {MAX_HEADER_BYTES}): corrupt"
                )
            if 8 + n > file_size:
                raise UnreadableCheckpointError(
                    f"safetensors header claims {n} bytes but the file has {file_size}"
                )
            raw = f.read(n)
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
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self._path), framework="pt", device="cpu")
        tensor: torch.Tensor = self._handle.get_tensor(handle)
        return tensor

    def storage_id(self, handle: str) -> tuple[str, ...]:
        return (handle,)

    def close(self) -> None:
        self._handle = None


# --------------------------------------------------------------------------------------------
# Entries, prefixes and the Source.
# --------------------------------------------------------------------------------------------


def _is_tensor_dict(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and bool(node)
        and all(isinstance(k, str) for k in node)
        and all(isinstance(v, TensorRef) for v in node.values())
    )


def _tensor_dicts(root: Any, max_depth: int = 4) -> dict[str, dict[str, TensorRef]]:
    """Candidate weight entries: str-keyed dicts of tensors, by dotted path ('' = the root)."""
    found: dict[str, dict[str, TensorRef]] = {}
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        path, node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if _is_tensor_dict(node):
            found[path] = node
            continue
        if depth >= max_depth:
            continue
        for k, v in node.items():
            if isinstance(k, str) and isinstance(v, dict) and not k.startswith("optimizer"):
                stack.append((f"{path}.{k}" if path else k, v, depth + 1))
    return found


def _resolve_path(root: Any, path: str) -> Any:
    node = root
    if isinstance(node, dict) and path in node:
        return node[path]
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UnreadableCheckpointError(f"entry {path!r} not found in the checkpoint")
        node = node[part]
    return node


def _choose_entry(root: Any, entry: str) -> tuple[str | None, dict[str, TensorRef], list[str]]:
    """Pick the weights entry; returns (entry path or None for the root, tensors, candidates)."""
    if _is_tensor_dict(root):
        if entry not in ("auto", ""):
            raise UnreadableCheckpointError(
                f"entry {entry!r} requested, but the checkpoint is a flat state dict"
            )
        return None, root, []
    if not isinstance(root, dict):
        raise UnreadableCheckpointError(
            f"the checkpoint holds a {type(root).__name__}, not a dict of tensors"
        )
    candidates = _tensor_dicts(root)
    if entry != "auto":
        node = _resolve_path(root, entry)
        if not _is_tensor_dict(node):
            raise UnreadableCheckpointError(f"entry {entry!r} is not a dict of tensors")
        return entry, node, sorted(candidates)
    for name in (*_EMA_ENTRIES, *_PLAIN_ENTRIES):
        if name in candidates:
            return name, candidates[name], sorted(candidates)
    if not candidates:
        raise UnreadableCheckpointError("no dict of tensors found in the checkpoint")

    def size(item: tuple[str, dict[str, TensorRef]]) -> int:
        return sum(math.prod(r.shape) for r in item[1].values())

    best = max(candidates.items(), key=size)
    return best[0], best[1], sorted(candidates)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"dict[{len(value)}]"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{len(value)}]"
    if isinstance(value, TensorRef):
        return "tensor"
    if isinstance(value, str | int | float | bool) or value is None:
        return f"{type(value).__name__} = {str(value)[:60]}"
    return type(value).__name__


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed through a 1 MiB buffer."""
    digest = hashlib.sha256()
    buf = bytearray(_COPY_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


@dataclass
class _Entry:
    """Where a (renamed) key's data lives."""

    reader: _Reader
    handle: Any  # TensorRef for pickle formats, the raw key for safetensors


class Source:
    """An opened source checkpoint: tensor descriptions now, tensor data on request.

    Attributes:
        paths: the files making up the source (one, or index + shards).
        format: ``torch-zip``, ``torch-legacy``, ``safetensors`` or ``hf-sharded``.
        entry: the chosen weights entry (``None`` when the file is a flat state dict).
        candidates: every dict of tensors found (for entry choice and the report).
        ignored: non-tensor entries next to the weights, described but never used.
        stripped_prefix: what was removed from every key (``module.``), if anything.
        tensors: key -> :class:`TensorInfo`, in file order.
        metadata: safetensors ``__metadata__`` (merged across shards).
    """

    def __init__(
        self,
        paths: list[Path],
        fmt: str,
        readers: list[_Reader],
        entries: dict[str, _Entry],
        tensors: dict[str, TensorInfo],
        *,
        entry: str | None = None,
        candidates: list[str] | None = None,
        ignored: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        lightning: bool = False,
    ) -> None:
        self.paths = paths
        self.format = fmt
        self._readers = readers
        self._entries = entries
        self.tensors = tensors
        self.entry = entry
        self.candidates = candidates or []
        self.ignored = ignored or {}
        self.metadata = metadata or {}
        self.lightning = lightning
        self.stripped_prefix: str | None = None
        self._sha256: str | None = None

    # Keys and prefixes -------------------------------------------------------------------

    def common_prefix(self, candidates: Sequence[str]) -> str | None:
        """The first of ``candidates`` that every key starts with, if any."""
        for prefix in candidates:
            if self.tensors and all(k.startswith(prefix) for k in self.tensors):
                return prefix
        return None

    def strip_prefix(self, prefix: str) -> None:
        """Remove ``prefix`` from every key that has it (re-keys tensors, keeps order)."""
        n = len(prefix)
        tensors: dict[str, TensorInfo] = {}
        entries: dict[str, _Entry] = {}
        for key, info in self.tensors.items():
            new = key[n:] if key.startswith(prefix) and len(key) > n else key
            if new in tensors:
                raise UnreadableCheckpointError(
                    f"stripping {prefix!r} makes two keys collide on {new!r}"
                )
            tensors[new] = TensorInfo(new, info.shape, info.dtype, info.kind, info.module)
            entries[new] = self._entries[key]
        self.tensors, self._entries = tensors, entries
        self.stripped_prefix = (self.stripped_prefix or "") + prefix

    def strip_wrapper_prefixes(self) -> None:
        """Strip ``module.`` / ``_orig_mod.`` (repeatedly) while every key carries one."""
        while (prefix := self.common_prefix(WRAPPER_PREFIXES)) is not None:
            self.strip_prefix(prefix)

    # Data --------------------------------------------------------------------------------

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor onto the CPU, contiguous, in its stored dtype."""
        entry = self._entries[key]
        return entry.reader.read(entry.handle)

    def byte_range(self, key: str) -> tuple[Path, int, int] | None:
        """(file, offset, length) of ``key``'s bytes in C order, or None if not laid out so."""
        entry = self._entries[key]
        return entry.reader.byte_range(entry.handle)

    def storage_id(self, key: str) -> tuple[str, ...]:
        """Identity of the bytes behind ``key``: equal for tensors that share storage."""
        entry = self._entries[key]
        return (str(id(entry.reader)), *entry.reader.storage_id(entry.handle))

    def sha256(self) -> str:
        """sha256 of the file; for a sharded set, that of its ``sha256sum`` listing
        (``"<sha256>  <name>"`` lines sorted by name), as the service identifies sets."""
        if self._sha256 is None:
            if len(self.paths) == 1:
                self._sha256 = sha256_file(self.paths[0])
            else:
                paths = sorted(self.paths, key=lambda p: p.name)
                lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in paths)
                self._sha256 = hashlib.sha256(lines.encode()).hexdigest()
        return self._sha256

    def close(self) -> None:
        for reader in self._readers:
            reader.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Description ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The JSON-ready inspection summary (what ``graft inspect --json`` prints)."""
        by_dtype: dict[str, dict[str, int]] = {}
        by_kind = {k: {"tensors": 0, "elements": 0} for k in ("parameter", "buffer")}
        for info in self.tensors.values():
            d = by_dtype.setdefault(info.dtype, {"tensors": 0, "elements": 0, "bytes": 0})
            d["tensors"] += 1
            d["elements"] += info.numel
            d["bytes"] += info.nbytes
            by_kind[info.kind]["tensors"] += 1
            by_kind[info.kind]["elements"] += info.numel
        return {
            "schema": "graft.inspect/v1",
            "paths": [str(p) for p in self.paths],
            "format": self.format,
            "entry": self.entry,
            "candidates": self.candidates,
            "stripped_prefix": self.stripped_prefix,
            "common_prefix": self.common_prefix(("model.",)),
            "lightning": self.lightning,
            "ignored": self.ignored,
            "metadata": self.metadata,
            "totals": {
                "tensors": len(self.tensors),
                "elements": sum(i.numel for i in self.tensors.values()),
                "bytes": sum(i.nbytes for i in self.tensors.values()),
                "parameters": by_kind["parameter"],
                "buffers": by_kind["buffer"],
                "by_dtype": by_dtype,
            },
            "tensors": [
                {"key": i.key, "shape": list(i.shape), "dtype": i.dtype, "kind": i.kind}
                for i in self.tensors.values()
            ],
        }


# --------------------------------------------------------------------------------------------
# Opening.
# --------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnreadableCheckpointError(f"cannot read {path.name}: {exc.strerror}") from None
    if size == 0:
        raise UnreadableCheckpointError(f"{path.name} is empty")
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    kind = _known_non_checkpoint(head)
    raise UnreadableCheckpointError(
        f"{path.name} is not a checkpoint"
        + (f": it looks like {kind}" if kind else "")
        + " (expected torch.save zip, legacy pickle or safetensors)"
    )


def _known_non_checkpoint(head: bytes) -> str | None:
    signatures = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"%PDF": "a PDF document",
        b"\x1f\x8b": "a gzip stream",
        b"\x93NUMPY": "a NumPy array",
        b"\x08\x01\x12": "an ONNX model",
        b"\x89HDF": "an HDF5 (Keras) file",
    }
    for magic, kind in signatures.items():
        if head.startswith(magic):
            return kind
    if head[:1] in (b"{", b"["):
        return "JSON text"
    return None


def _open_single(path: Path) -> _Reader:
    fmt = _sniff(path)
    if fmt == "torch-zip":
        return _ZipReader(path)
    if fmt == "torch-legacy":
        return _LegacyReader(path)
    return _SafetensorsReader(path)


def _shard_files(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
) -> dict[str, Path] | None:
    """Name -> path of a sharded set, or None when ``path`` is a single file."""
    if isinstance(path, Mapping):
        return {str(k): Path(v) for k, v in path.items()}
    if isinstance(path, str | os.PathLike):
        p = Path(path)
        if p.is_dir():
            return _model_folder(p)
        if p.name.endswith(".index.json"):
            return {c.name: c for c in sorted(p.parent.iterdir()) if c.is_file()}
        return None
    files = [Path(p) for p in path]
    if len(files) == 1 and not files[0].name.endswith(".index.json"):
        return None
    return {p.name: p for p in files}


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _model_folder(folder: Path) -> dict[str, Path] | None:
    """A Hugging Face style folder: its sharded set, or None when it holds one weights file.

    Raises when the folder holds neither, or several unrelated weights files.
    """
    files = {c.name: c for c in sorted(folder.iterdir()) if c.is_file()}
    if any(n.endswith(".index.json") for n in files):
        return files
    weights = [n for n in files if n.endswith(_WEIGHT_SUFFIXES)]
    safetensors = [n for n in weights if n.endswith(".safetensors")]
    chosen = safetensors if safetensors else weights
    if len(chosen) != 1:
        raise UnreadableCheckpointError(
            f"{folder.name}/ holds {len(chosen)} weights files and no *.index.json; "
            "pass the file to use"
        )
    return {"": files[chosen[0]]}


def _reader_tensors(
    reader: _Reader, entry: str
) -> tuple[str | None, dict[str, tuple[Any, TensorInfo]], list[str]]:
    """The chosen entry of one file: key -> (read handle, description), plus candidates."""
    root = reader.parsed.root
    if isinstance(reader, _SafetensorsReader):
        if entry not in ("auto", ""):
            raise UnreadableCheckpointError("safetensors files have no entries to choose from")
        return None, {k: (k, info) for k, info in root.items()}, []
    chosen, refs, candidates = _choose_entry(root, entry)
    tensors = {}
    for key, ref in refs.items():
        kind = "parameter" if ref.is_parameter else guess_kind(key, ref.dtype)
        tensors[key] = (ref, TensorInfo(key, ref.shape, ref.dtype, kind))
    return chosen, tensors, candidates


def _open_sharded(files: dict[str, Path]) -> Source:
    indexes = [n for n in files if n.endswith(".index.json")]
    if len(indexes) > 1:  # a folder with both: safetensors shards are the safe, lazy choice
        indexes = [n for n in indexes if n.endswith(".safetensors.index.json")] or indexes
    if len(indexes) != 1:
        raise UnreadableCheckpointError(
            f"a sharded set needs exactly one *.index.json, found {len(indexes)}"
        )
    index_path = files[indexes[0]]
    if index_path.stat().st_size > MAX_HEADER_BYTES:
        raise TooLargeError("index.json is too large")
    try:
        index = json.loads(index_path.read_bytes())
    except (UnicodeDecodeError, ValueError):
        raise UnreadableCheckpointError(f"{index_path.name} is not valid JSON") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UnreadableCheckpointError(f"{index_path.name} has no weight_map")
    for key, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or not shard
            or "/" in shard
            or "\\" in shard
            or shard in (".", "..")
            or Path(shard).is_absolute()
        ):
            raise UnsafeCheckpointError(
                f"unsafe checkpoint: weight_map sends {key!r} to {shard!r}, which is not a plain "
                "file name inside the set"
            )
        if shard not in files:
            raise UnreadableCheckpointError(
                f"shard {shard!r} (for {key!r}) is missing from the set"
            )
    readers: dict[str, _Reader] = {}
    try:
        shard_tensors: dict[str, dict[str, tuple[Any, TensorInfo]]] = {}
        metadata: dict[str, str] = {}
        for shard in dict.fromkeys(weight_map.values()):
            readers[shard] = _open_single(files[shard])
            shard_tensors[shard] = _reader_tensors(readers[shard], "auto")[1]
            metadata.update(readers[shard].parsed.metadata)
        entries: dict[str, _Entry] = {}
        tensors: dict[str, TensorInfo] = {}
        for key, shard in weight_map.items():
            found = shard_tensors[shard].get(key)
            if found is None:
                raise UnreadableCheckpointError(f"{key!r} is not in its shard {shard!r}")
            entries[key] = _Entry(readers[shard], found[0])
            tensors[key] = found[1]
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise
    paths = [index_path, *(files[s] for s in readers)]
    return Source(paths, "hf-sharded", list(readers.values()), entries, tensors, metadata=metadata)


def _open_file(path: Path, entry: str) -> Source:
    reader = _open_single(path)
    try:
        chosen, found, candidates = _reader_tensors(reader, entry)
        root = reader.parsed.root
        ignored: dict[str, str] = {}
        if isinstance(root, dict) and chosen is not None:
            top = chosen if chosen in root else chosen.split(".", 1)[0]
            ignored = {str(k): _describe(v) for k, v in root.items() if k != top}
        lightning = isinstance(root, dict) and "pytorch-lightning_version" in root
        if chosen is not None:
            logger.info("%s: using entry %r of %s", path.name, chosen, candidates)
        return Source(
            [path],
            reader.format,
            [reader],
            {k: _Entry(reader, handle) for k, (handle, _) in found.items()},
            {k: info for k, (_, info) in found.items()},
            entry=chosen,
            candidates=candidates,
            ignored=ignored,
            metadata=reader.parsed.metadata,
            lightning=lightning,
        )
    except BaseException:
        reader.close()
        raise


def open_source(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
    *,
    entry: str = "auto",
    strip_prefixes: str | Sequence[str] = "auto",
) -> Source:
    """Open a checkpoint and describe its tensors without reading their data.

    Args:
        path: a file; a directory or ``*.index.json`` of a sharded set; a list of the set's
            files; or a mapping of file name -> path (for sets stored under other names).
        entry: ``auto`` (SPEC §1 order) or a dotted path to the dict of weights.
        strip_prefixes: ``auto`` strips ``module.`` / ``_orig_mod.`` when every key has one;
            ``none`` strips nothing; a list strips each prefix from the keys that carry it.

    Returns:
        A :class:`Source`; close it (or use it as a context manager) when done.

    Raises:
        UnsafeCheckpointError: the file would run code, or points outside its set.
        UnreadableCheckpointError: empty, truncated, inconsistent or not a checkpoint.
        TooLargeError: a header or archive exceeds the reader's limits.
    """
    shards = _shard_files(path)
    if shards is not None and "" in shards:  # a model folder holding a single weights file
        path, shards = shards[""], None
    source = _open_sharded(shards) if shards is not None else _open_file(Path(path), entry)  # type: ignore[arg-type]
    try:
        if strip_prefixes == "auto":
            source.strip_wrapper_prefixes()
        elif strip_prefixes != "none":
            for prefix in strip_prefixes:
                source.strip_prefix(prefix)
    except BaseException:
        source.close()
        raise
    return source


def inspect_source(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path], *, entry: str = "auto"
) -> dict[str, Any]:
    """Open, describe and close: the data behind ``graft inspect --json``."""
    with open_source(path, entry=entry) as source:
        return source.describe()
