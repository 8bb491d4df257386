"""Several named sources opened as one :class:`Source` whose keys are ``NAME:KEY``.

Each source is opened on its own (its own ``entry`` and ``strip_prefixes``), then its keys are
qualified by its name. Tensor data is still read one tensor at a time from the reader that
holds it, so streaming and the memory bound are those of one source.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import TensorInfo
from app.engine.readers.opening import open_source
from app.engine.readers.source import Located, Source, SourceExtras

__all__ = ["NamedSources", "SeveralSources", "open_several"]

PathLike = str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path]


@dataclass(frozen=True)
class NamedSources:
    """Several sources by name (what ``convert`` takes instead of one path).

    Attributes:
        paths: name -> the source's path (a file, a folder, a sharded set's files).
    """

    paths: Mapping[str, PathLike]


class SeveralSources(Source):
    """Several opened sources as one: keys ``NAME:KEY``; ``parts`` keeps each by name.

    Its ``format`` is the parts' common format, else ``several``. Its digests are those of
    the listing ``"<digest>  <name>"`` of its parts, sorted by name; each part's digest is
    kept for the report.
    """

    def __init__(self, parts: dict[str, Source]) -> None:
        entries: dict[str, Located] = {}
        tensors: dict[str, TensorInfo] = {}
        readers = []
        paths: list[Path] = []
        for name, part in parts.items():
            readers += part._readers
            paths += part.paths
            for key, info in part.tensors.items():
                qualified = f"{name}:{key}"
                entries[qualified] = part._entries[key]
                tensors[qualified] = TensorInfo(
                    qualified, info.shape, info.dtype, info.kind, info.module
                )
        formats = {p.format for p in parts.values()}
        fmt = formats.pop() if len(formats) == 1 else "several"
        super().__init__(paths, fmt, readers, entries, tensors, SourceExtras())
        self.parts = parts
        # Keys a recipe step changed as they are read (``lora``): key -> the step's name.
        self.changed: dict[str, str] = {}

    def located(self, key: str) -> Located:
        """Where ``key``'s data is read from."""
        return self._entries[key]

    def replace(self, key: str, located: Located, step: str) -> None:
        """Read ``key`` from ``located`` from now on (a value ``step`` computes)."""
        self._entries[key] = located
        self.changed[key] = step

    def consume(self, name: str) -> None:
        """Take part ``name``'s keys out of the key list (a step used them all)."""
        prefix = f"{name}:"
        for key in [k for k in self.tensors if k.startswith(prefix)]:
            del self.tensors[key]
            del self._entries[key]

    def know_sha256(self, digests: Mapping[str, str]) -> None:
        """Take the parts' sha256 the caller already knows (uploads are hashed on arrival)."""
        for name, digest in digests.items():
            if name in self.parts:
                self.parts[name]._sha256 = digest

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self._listing(lambda p: p.sha256(), hashlib.sha256)
        return self._sha256

    def blake3(self) -> str:
        import blake3

        if self._blake3 is None:
            self._blake3 = self._listing(lambda p: p.blake3(), blake3.blake3)
        return self._blake3

    def _listing(self, of_part: Callable[[Source], str], hasher: Callable[[bytes], Any]) -> str:
        lines = "".join(f"{of_part(self.parts[n])}  {n}\n" for n in sorted(self.parts))
        return str(hasher(lines.encode()).hexdigest())

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["sources"] = {name: part.describe() for name, part in self.parts.items()}
        return described


def open_several(
    paths: Mapping[str, PathLike], specs: Mapping[str, tuple[str, str | Sequence[str]]]
) -> SeveralSources:
    """Open every named source and join them.

    Args:
        paths: name -> path, in the order their keys are listed.
        specs: name -> (entry, strip_prefixes) for that source.

    Returns:
        The joined source; closing it closes every part.

    Raises:
        UnreadableCheckpointError: no sources, or one cannot be read (naming it).
    """
    if not paths:
        raise UnreadableCheckpointError("several sources were asked for, but none was given")
    opened: dict[str, Source] = {}
    try:
        for name, path in paths.items():
            entry, strip = specs.get(name, ("auto", "auto"))
            try:
                opened[name] = open_source(path, entry=entry, strip_prefixes=strip)
            except UnreadableCheckpointError as exc:
                raise UnreadableCheckpointError(f"source {name!r}: {exc.message}") from None
        return SeveralSources(opened)
    except BaseException:
        for part in opened.values():
            part.close()
        raise
