"""Sizes as people write them on the command line (``--max-shard-size 5GB``)."""

from __future__ import annotations

import typer

__all__ = ["parse_size"]

_SIZE_UNITS = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``5GB`` (decimal, as Hugging Face writes it), ``500MiB`` (binary) or plain bytes."""
    number = text.strip()
    digits = len(number) - len(number.lstrip("0123456789."))
    value, unit = number[:digits], number[digits:].strip().upper()
    if not value or unit not in _SIZE_UNITS:
        raise typer.BadParameter(f"{text!r} is not a size: write e.g. 5GB, 500MiB or 1000000")
    size = int(float(value) * _SIZE_UNITS[unit])
    if size <= 0:
        raise typer.BadParameter("a size must be positive")
    return size
