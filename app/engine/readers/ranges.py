"""Reading a byte range of a checkpoint file straight into a tensor's memory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.engine.readers.base import readinto_exact

if TYPE_CHECKING:
    import torch

__all__ = ["read_into"]


def read_into(dest: torch.Tensor, path: Path, offset: int, length: int, *, what: str) -> None:
    """Read ``length`` bytes at ``offset`` of ``path`` into the contiguous ``dest``.

    The file is opened for this read only, so nothing stays open between tensors.

    Args:
        dest: a contiguous tensor of at least ``length`` bytes.
        path: the file to read.
        offset: where the bytes start.
        length: how many bytes to read.
        what: names the piece in the error (``"a DCP chunk"``).

    Raises:
        UnreadableCheckpointError: the file ends before ``length`` bytes were read.
    """
    import torch

    if not length:
        return
    view = dest.view(torch.uint8).numpy().data
    with path.open("rb", buffering=0) as f:
        readinto_exact(f, offset, view[:length], what)
