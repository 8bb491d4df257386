"""Progress reporting: ``(stage, fraction)`` for everyone, counts for those who ask.

The engine reports progress as ``progress(stage, fraction)``. A caller that also wants to
know how many tensors and bytes are written (a job's live progress) passes an object with a
``counts`` method besides ``__call__``; the writers call it before each fraction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["CountingProgress", "Progress", "report_tensor"]

Progress = Callable[[str, float], None]


@runtime_checkable
class CountingProgress(Protocol):
    """A progress callback that also takes counts."""

    def __call__(self, stage: str, fraction: float) -> None: ...

    def counts(self, *, tensors_done: int, tensors_total: int, bytes_done: int) -> None:
        """Tensors produced so far, out of how many, and the bytes written so far."""
        ...


def report_tensor(
    progress: Progress | None, stage: str, *, done: int, total: int, bytes_done: int
) -> None:
    """One more tensor is done: counts (if wanted), then the fraction."""
    if progress is None:
        return
    if isinstance(progress, CountingProgress):
        progress.counts(tensors_done=done, tensors_total=total, bytes_done=bytes_done)
    progress(stage, done / max(total, 1))
