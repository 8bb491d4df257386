"""Hugging Face sharded sets: an ``*.index.json`` whose ``weight_map`` names plain shard files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.engine.errors import TooLargeError, UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.meta import TensorInfo
from app.engine.readers.base import MAX_HEADER_BYTES, Reader
from app.engine.readers.entries import reader_tensors
from app.engine.readers.sniff import open_reader
from app.engine.readers.source import Located, Source, SourceExtras

__all__ = ["open_sharded", "shard_files"]


def shard_files(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
) -> dict[str, Path] | None:
    """Name -> path of a sharded set, or None when ``path`` is a single file (``{"": path}``
    for one file named in a folder or a mapping)."""
    if isinstance(path, Mapping):
        named = {str(k): Path(v) for k, v in path.items()}
        if len(named) == 1 and not next(iter(named)).endswith(".index.json"):
            return {"": next(iter(named.values()))}
        return named
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


def open_sharded(files: dict[str, Path]) -> Source:
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
    readers: dict[str, Reader] = {}
    try:
        shard_tensors: dict[str, dict[str, tuple[Any, TensorInfo]]] = {}
        metadata: dict[str, str] = {}
        for shard in dict.fromkeys(weight_map.values()):
            readers[shard] = open_reader(files[shard])
            shard_tensors[shard] = reader_tensors(readers[shard], "auto")[1]
            metadata.update(readers[shard].parsed.metadata)
        entries: dict[str, Located] = {}
        tensors: dict[str, TensorInfo] = {}
        for key, shard in weight_map.items():
            found = shard_tensors[shard].get(key)
            if found is None:
                raise UnreadableCheckpointError(f"{key!r} is not in its shard {shard!r}")
            entries[key] = Located(readers[shard], found[0])
            tensors[key] = found[1]
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise
    paths = [index_path, *(files[s] for s in readers)]
    extras = SourceExtras(metadata=metadata)
    return Source(paths, "hf-sharded", list(readers.values()), entries, tensors, extras)
