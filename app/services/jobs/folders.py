"""A job's folder output (a model folder, a DCP checkpoint) published as one zip artifact.

The sandbox child wrote the folder; its word is not trusted, so only regular files (no
links, nothing outside the folder) go into the zip, stored uncompressed (weights do not
compress, and the bytes stay as they were written). Each file's sha256 is taken as it is
zipped, for the attestation's subject.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from app.errors import InternalError

__all__ = ["zip_folder"]

_CHUNK = 1 << 20


def zip_folder(folder: Path, into: Path) -> list[tuple[str, str]]:
    """Zip ``folder``'s regular files into ``into`` (names relative to the folder).

    Returns:
        ``(name, sha256)`` of every file zipped, sorted by name.

    Raises:
        InternalError: the folder holds a link or something other than files and folders.
    """
    files: list[tuple[str, Path]] = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise InternalError("the sandbox produced an output folder holding a link")
        if path.is_file():
            files.append((path.relative_to(folder).as_posix(), path))
    subjects: list[tuple[str, str]] = []
    with zipfile.ZipFile(into, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in files:
            digest = hashlib.sha256()
            with path.open("rb") as src, archive.open(name, "w", force_zip64=True) as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            subjects.append((name, digest.hexdigest()))
    return subjects
