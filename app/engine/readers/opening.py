"""The readers' front door: open a file, a folder or a sharded set as one :class:`Source`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.engine.readers.dcp import dcp_files, open_dcp
from app.engine.readers.entries import describe_value, reader_tensors
from app.engine.readers.megatron import iteration_dir, megatron_folder, open_megatron
from app.engine.readers.remote import RemoteBlob
from app.engine.readers.safetensors_file import SafetensorsReader
from app.engine.readers.sharded import open_sharded, shard_files
from app.engine.readers.sniff import open_reader
from app.engine.readers.source import Located, Source, SourceExtras
from app.engine.readers.zero import open_zero, zero_files

__all__ = ["inspect_source", "open_source"]

logger = logging.getLogger(__name__)


def _open_file(path: Path, entry: str, remote: RemoteBlob | None = None) -> Source:
    reader = open_reader(path) if remote is None else SafetensorsReader(path, remote)
    try:
        chosen, found, candidates = reader_tensors(reader, entry)
        root = reader.parsed.root
        ignored: dict[str, str] = {}
        if isinstance(root, dict) and chosen is not None:
            top = chosen if chosen in root else chosen.split(".", 1)[0]
            ignored = {str(k): describe_value(v) for k, v in root.items() if k != top}
        lightning = isinstance(root, dict) and "pytorch-lightning_version" in root
        if chosen is not None:
            logger.info("%s: using entry %r of %s", path.name, chosen, candidates)
        return Source(
            [path],
            reader.format,
            [reader],
            {k: Located(reader, handle) for k, (handle, _) in found.items()},
            {k: info for k, (_, info) in found.items()},
            SourceExtras(
                entry=chosen,
                candidates=candidates,
                ignored=ignored,
                metadata=reader.parsed.metadata,
                lightning=lightning,
            ),
        )
    except BaseException:
        reader.close()
        raise


def _torch_dist_iteration(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
) -> str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path]:
    """A Megatron checkpoint folder whose tracker names a ``torch_dist`` iteration (a DCP
    folder): that iteration's folder; anything else as it is."""
    if isinstance(path, str | os.PathLike) and Path(path).is_dir():
        folder = iteration_dir(Path(path))
        if folder is not None and folder != Path(path) and (folder / ".metadata").is_file():
            return folder
    return path


def open_source(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path] | RemoteBlob,
    *,
    entry: str = "auto",
    strip_prefixes: str | Sequence[str] = "auto",
) -> Source:
    """Open a checkpoint and describe its tensors without reading their data.

    Args:
        path: a file; a directory or ``*.index.json`` of a sharded set; a DCP folder (or its
            ``.metadata``); a DeepSpeed checkpoint folder (holding ``latest``, or its
            ``global_stepN``); a Megatron-LM checkpoint folder (or its ``iter_N``; ``torch``
            or ``torch_dist`` format); a list of the set's files; a mapping of file name ->
            path (for sets stored under other names); or a :class:`RemoteBlob`, a safetensors
            file read by ranges.
        entry: ``auto`` (SPEC §1 order) or a dotted path to the dict of weights (for DCP,
            the entry's key prefix: ``optimizer`` takes the optimizer state).
        strip_prefixes: ``auto`` strips ``module.`` / ``_orig_mod.`` when every key has one;
            ``none`` strips nothing; a list strips each prefix from the keys that carry it.

    Returns:
        A :class:`Source`; close it (or use it as a context manager) when done.

    Raises:
        UnsafeCheckpointError: the file would run code, or points outside its set.
        UnreadableCheckpointError: empty, truncated, inconsistent or not a checkpoint.
        TooLargeError: a header or archive exceeds the reader's limits.
    """
    if isinstance(path, RemoteBlob):
        source = _open_file(Path(path.name), entry, path)
        source._sha256 = path.sha256  # known: never hashed by reading it all again
        return _strip(source, strip_prefixes)
    zero = zero_files(path)
    megatron = megatron_folder(path) if zero is None else None
    if zero is None and megatron is None:
        path = _torch_dist_iteration(path)
    dcp = dcp_files(path) if zero is None and megatron is None else None
    shards = shard_files(path) if dcp is None and zero is None and megatron is None else None
    if shards is not None and "" in shards:  # a model folder holding a single weights file
        path, shards = shards[""], None
    if zero is not None:
        source = open_zero(zero, entry)
    elif megatron is not None:
        source = open_megatron(megatron)
    elif dcp is not None:
        source = open_dcp(dcp, entry)
    elif shards is not None:
        source = open_sharded(shards)
    else:
        source = _open_file(Path(path), entry)  # type: ignore[arg-type]
    return _strip(source, strip_prefixes)


def _strip(source: Source, strip_prefixes: str | Sequence[str]) -> Source:
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
