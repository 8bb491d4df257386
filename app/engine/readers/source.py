"""The opened source: tensor descriptions now, tensor data on request, one reader per file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import TensorInfo
from app.engine.readers.base import Reader

if TYPE_CHECKING:
    import torch

__all__ = [
    "WRAPPER_PREFIXES",
    "Located",
    "Source",
    "SourceExtras",
    "sha256_file",
    "sha256_files",
]

# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_COPY_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed through a 1 MiB buffer."""
    digest = hashlib.sha256()
    buf = bytearray(_COPY_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_files(paths: Sequence[Path], workers: int | None = None) -> list[str]:
    """Hex sha256 of each file, in ``paths``' order, the files hashed side by side.

    sha256 cannot split one file, but ``hashlib`` releases the GIL on large updates, so an
    output of several shards is hashed on every core: the largest files start first.

    Args:
        paths: the files.
        workers: threads at most (default: the CPU count).
    """
    workers = min(len(paths), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [sha256_file(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(range(len(paths)), key=lambda i: -paths[i].stat().st_size)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-sha256") as pool:
        futures = {i: pool.submit(sha256_file, paths[i]) for i in order}
        return [futures[i].result() for i in range(len(paths))]


@dataclass
class Located:
    """Where a (renamed) key's data lives."""

    reader: Reader
    handle: Any  # TensorRef for pickle formats, the raw key for safetensors


@dataclass(frozen=True)
class SourceExtras:
    """What a reader found around the weights, described for the report.

    Attributes:
        entry: the chosen weights entry (``None`` when the file is a flat state dict).
        candidates: every dict of tensors found (for entry choice and the report).
        ignored: non-tensor entries next to the weights, described but never used.
        metadata: safetensors ``__metadata__`` (merged across shards).
        lightning: the file is a PyTorch Lightning checkpoint.
        layout: a training checkpoint's layout (format, world size, chunks), for ``inspect``.
    """

    entry: str | None = None
    candidates: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    lightning: bool = False
    layout: dict[str, Any] | None = None


class Source:
    """An opened source checkpoint: tensor descriptions now, tensor data on request.

    Attributes:
        paths: the files making up the source (one, or index + shards).
        format: ``torch-zip``, ``torch-legacy``, ``safetensors``, ``hf-sharded`` or ``dcp``.
        entry: the chosen weights entry (``None`` when the file is a flat state dict).
        candidates: every dict of tensors found (for entry choice and the report).
        ignored: non-tensor entries next to the weights, described but never used.
        stripped_prefix: what was removed from every key (``module.``), if anything.
        tensors: key -> :class:`TensorInfo`, in file order.
        metadata: safetensors ``__metadata__`` (merged across shards).
        layout: how a training checkpoint is laid out (DCP: world size, chunks per tensor,
            what was left out), or None for a plain file or set.
    """

    def __init__(
        self,
        paths: list[Path],
        fmt: str,
        readers: list[Reader],
        entries: dict[str, Located],
        tensors: dict[str, TensorInfo],
        extras: SourceExtras | None = None,
    ) -> None:
        extras = extras or SourceExtras()
        self.paths = paths
        self.format = fmt
        self._readers = readers
        self._entries = entries
        self.tensors = tensors
        self.entry = extras.entry
        self.candidates = extras.candidates
        self.ignored = extras.ignored
        self.metadata = extras.metadata
        self.lightning = extras.lightning
        self.layout = extras.layout
        self.stripped_prefix: str | None = None
        self._sha256: str | None = None
        self._blake3: str | None = None

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
        entries: dict[str, Located] = {}
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

    def byte_ranges(self, key: str) -> list[tuple[Path, int, int]] | None:
        """``key``'s bytes in C order as ranges to read end to end (a DCP tensor saved in
        chunks along its first dim is one range per chunk), or None if not laid out so."""
        entry = self._entries[key]
        ranges = getattr(entry.reader, "byte_ranges", None)
        if ranges is not None:
            found: list[tuple[Path, int, int]] | None = ranges(entry.handle)
            return found
        span = entry.reader.byte_range(entry.handle)
        return [span] if span is not None else None

    def storage_id(self, key: str) -> tuple[str, ...]:
        """Identity of the bytes behind ``key``: equal for tensors that share storage."""
        entry = self._entries[key]
        return (str(id(entry.reader)), *entry.reader.storage_id(entry.handle))

    def sha256(self) -> str:
        """sha256 of the file; for a sharded set, that of its ``sha256sum`` listing
        (``"<sha256>  <name>"`` lines sorted by name), as the service identifies sets."""
        if self._sha256 is None:
            self._sha256 = self._set_digest(sha256_file, lambda b: hashlib.sha256(b).hexdigest())
        return self._sha256

    def blake3(self) -> str:
        """BLAKE3 of the file (what ``b3sum`` prints), hashed on every core from the page
        cache; for a sharded set, that of its ``b3sum`` listing (``"<blake3>  <name>"``
        lines sorted by name). About 4x cheaper than :meth:`sha256` on one core, and
        parallel, so it is the CLI's default identity."""
        import blake3

        from app.engine.output.digests import file_blake3

        if self._blake3 is None:
            self._blake3 = self._set_digest(file_blake3, lambda b: blake3.blake3(b).hexdigest())
        return self._blake3

    def _set_digest(
        self, of_file: Callable[[Path], str], of_listing: Callable[[bytes], str]
    ) -> str:
        """``of_file`` of the one file; for a sharded set, ``of_listing`` of the
        ``"<digest>  <name>"`` lines sorted by name (what ``sha256sum``/``b3sum`` print)."""
        if len(self.paths) == 1:
            return of_file(self.paths[0])
        paths = sorted(self.paths, key=lambda p: p.name)
        return of_listing("".join(f"{of_file(p)}  {p.name}\n" for p in paths).encode())

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
        described: dict[str, Any] = {
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
        if self.layout is not None:
            described["layout"] = self.layout
        return described
