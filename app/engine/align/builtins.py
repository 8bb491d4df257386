"""Built-in recipes: data files shipped with Graft, named ``builtin:NAME`` and versioned.

Each file in ``builtin/`` is an ordinary recipe with two ``x-`` fields the loader ignores:
``x-name``/``x-version`` are implied by the file name (``NAME.yaml``), ``x-description`` says
what it converts and ``x-proven-by`` names the test that converts a real or generated
checkpoint with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["BUILTIN_PREFIX", "Builtin", "builtin_path", "list_builtins"]

BUILTIN_PREFIX = "builtin:"
_DIR = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class Builtin:
    """One built-in recipe: its name, version, one-line description and file."""

    name: str
    version: int
    description: str
    path: Path


def list_builtins() -> list[Builtin]:
    """Every built-in recipe, by name."""
    out = []
    for path in sorted(_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out.append(
            Builtin(
                path.stem,
                int(data.get("x-version", 1)),
                str(data.get("x-description", "")),
                path,
            )
        )
    return out


def builtin_path(name: str) -> Path:
    """The file of ``builtin:NAME`` (or ``NAME``).

    Raises:
        LookupError: no such built-in; the message lists the ones that exist.
    """
    bare = name.removeprefix(BUILTIN_PREFIX)
    path = _DIR / f"{bare}.yaml"
    if "/" in bare or not path.is_file():
        names = ", ".join(b.name for b in list_builtins())
        raise LookupError(f"no built-in recipe {bare!r}; the built-ins are: {names}")
    return path
