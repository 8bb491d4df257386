"""Choosing the one checkpoint among a model version's artifacts.

A version's artifacts often hold more than weights (``MLmodel``, ``requirements.txt``, a
report). Graft needs exactly one checkpoint: one weights file, or one Hugging Face sharded set
(``model-00001-of-00003.safetensors`` … plus ``model.safetensors.index.json``). When there are
several, the job's ``path`` names a file or a folder holding one.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from app.registry.errors import InvalidReferenceError, RegistryNotFoundError

__all__ = ["WEIGHT_SUFFIXES", "ArtifactFile", "pick_checkpoint"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_SHARD = re.compile(
    r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>safetensors|bin)$"
)


@dataclass(frozen=True)
class ArtifactFile:
    """One file among a version's artifacts.

    Attributes:
        path: relative to the version's artifact root, ``/``-separated.
        size: bytes, when the registry said.
    """

    path: str
    size: int | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def _shard_sets(files: list[ArtifactFile]) -> dict[str, list[ArtifactFile]]:
    """Sharded sets keyed by their index path (which may be missing from ``files``)."""
    sets: dict[str, list[ArtifactFile]] = {}
    for f in files:
        match = _SHARD.match(f.name)
        if match:
            folder = posixpath.dirname(f.path)
            index = posixpath.join(folder, f"{match['stem']}.{match['ext']}.index.json")
            sets.setdefault(index, []).append(f)
    return sets


def _candidates(files: list[ArtifactFile]) -> list[list[ArtifactFile]]:
    """Every checkpoint among ``files``: single files, and sharded sets with their index."""
    by_path = {f.path: f for f in files}
    sets = _shard_sets(files)
    in_sets = {f.path for shards in sets.values() for f in shards}
    found: list[list[ArtifactFile]] = []
    for index, shards in sorted(sets.items()):
        counts = {int(m["count"]) for f in shards if (m := _SHARD.match(f.name))}
        indices = {int(m["index"]) for f in shards if (m := _SHARD.match(f.name))}
        if len(counts) != 1 or indices != set(range(1, counts.pop() + 1)):
            raise InvalidReferenceError(
                f"the sharded set {index.removesuffix('.index.json')} is incomplete "
                f"({len(shards)} shard(s) of mismatched or missing numbers)"
            )
        ordered = sorted(shards, key=lambda f: f.path)
        found.append([by_path[index], *ordered] if index in by_path else ordered)
    indexes = set(sets)
    for f in sorted(files, key=lambda f: f.path):
        if f.path in in_sets or f.path in indexes:
            continue
        if f.path.endswith(WEIGHT_SUFFIXES):
            found.append([f])
    return found


def pick_checkpoint(files: list[ArtifactFile], *, path: str | None = None) -> list[ArtifactFile]:
    """The one checkpoint among a version's artifacts.

    Args:
        files: every file of the version (recursive listing).
        path: a file or folder, relative to the artifact root, that names the checkpoint (a
            weights file, a shard or the index of a set, or a folder holding exactly one).

    Returns:
        One weights file, or a sharded set (index first when present, then the shards in order).

    Raises:
        RegistryNotFoundError: ``path`` names nothing among the artifacts.
        InvalidReferenceError: no checkpoint, several without a ``path``, an incomplete set.
    """
    if path is not None:
        wanted = posixpath.normpath(path.strip("/"))
        if wanted.startswith("..") or wanted == ".":
            raise InvalidReferenceError(f"path {path!r} must name a file or folder in the version")
        inside = [f for f in files if f.path == wanted or f.path.startswith(wanted + "/")]
        if not inside:
            raise RegistryNotFoundError(f"path {path!r} is not among the version's artifacts")
        for candidate in _candidates(files):
            if any(f.path == wanted for f in candidate):
                return candidate
        files = inside
    found = _candidates(files)
    if not found:
        raise InvalidReferenceError(
            "the model version holds no checkpoint (a *.safetensors, *.pt, *.pth, *.bin or "
            "*.ckpt file, or a sharded set)"
        )
    if len(found) > 1:
        names = ", ".join(c[0].path for c in found[:5])
        raise InvalidReferenceError(
            f"the model version holds {len(found)} checkpoints ({names}); "
            'name one with "path" in the source'
        )
    return found[0]
