"""The names of a checkpoint's files: relative paths inside the checkpoint, checked once.

A set's files are usually told apart by their own names (``model-00001-of-00002.safetensors``,
``__0_0.distcp``), but every rank file of a Megatron-LM checkpoint is ``model_optim_rng.pt``,
told apart by its folder: ``mp_rank_00_000/model_optim_rng.pt``. So a name is a relative
POSIX path, normalised (``./`` and doubled ``/`` dropped) and refused when it could reach
outside the folder it is linked into: ``..``, an absolute path, a backslash, a control
character. Stored blobs are addressed by sha256 either way; a name is used as a path only
when a checkpoint's blobs are linked into a job's or an inspection's private folder, and
:func:`member_path` checks it again there.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.services.errors import BadRequestError

__all__ = ["SetNames", "member_path", "set_member_name"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A file system's limit on one name, and the database column's on the whole path.
_MAX_BYTES = 255


def set_member_name(name: str) -> str:
    """``name`` as a normalised relative path (``a/./b`` -> ``a/b``).

    Raises:
        BadRequestError: empty, absolute, with ``..``, a backslash or a control character,
            not UTF-8, or over 255 bytes.
    """
    shown = f"{name!r:.80}"
    if "\\" in name:
        raise BadRequestError(f"unusable file name {shown}: use '/' between folders, not '\\'")
    if _CONTROL.search(name):
        raise BadRequestError(f"unusable file name {shown}: it holds a control character")
    if name.startswith("/"):
        raise BadRequestError(f"unusable file name {shown}: give a path relative to the set")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadRequestError(f"unusable file name {shown}: '..' may not climb out of the set")
    if not parts or parts[-1].strip() == "":
        raise BadRequestError(f"unusable file name {shown}: give a plain name like model.pth")
    normal = "/".join(parts)
    try:
        size = len(normal.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        raise BadRequestError("the file name is not valid UTF-8") from None
    if size > _MAX_BYTES:
        raise BadRequestError(
            f"the file name is {size} bytes in UTF-8; at most {_MAX_BYTES} are allowed"
        )
    return normal


class SetNames:
    """The names of a set received so far, refusing a repeat or a file that is another's folder."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()

    def add(self, name: str) -> None:
        """Take one more (normalised) name.

        Raises:
            BadRequestError: ``a`` twice, or ``a`` beside ``a/b``.
        """
        if name in self._files:
            raise BadRequestError(f"two files named {name!r}: a sharded set needs unique names")
        parents = {name.rsplit("/", n)[0] for n in range(1, name.count("/") + 1)}
        if name in self._folders or parents & self._files:
            raise BadRequestError(f"{name!r} is both a file and a folder of the set")
        self._files.add(name)
        self._folders |= parents


def member_path(folder: Path, name: str) -> Path:
    """Where the file ``name`` goes under ``folder`` (its parent folders made).

    Raises:
        BadRequestError: a name that is not a plain relative path (never stored so).
    """
    if set_member_name(name) != name:
        raise BadRequestError(f"unusable file name {name!r:.80}: not a normalised path")
    path = folder.joinpath(*name.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
