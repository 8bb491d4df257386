"""Progress reporting: one :class:`ProgressEvent` value, passed to one callable.

The engine reports where a conversion is as ``progress(ProgressEvent(stage, fraction))``.
While writing, each event also carries :class:`TensorCounts` (tensors done, out of how many,
bytes written), which a job's live progress shows; a caller that does not want them ignores
them. No caller is asked what it can take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "ProgressEvent", "TensorCounts", "report_tensor"]


@dataclass(frozen=True)
class TensorCounts:
    """Tensors produced so far, out of how many, and the bytes written so far."""

    tensors_done: int
    tensors_total: int
    bytes_done: int


@dataclass(frozen=True)
class ProgressEvent:
    """Where a conversion is.

    Attributes:
        stage: ``plan``, ``write``, ``verify``, ``verify-model``.
        fraction: how far the stage is, in 0..1.
        counts: the tensor and byte counts, while writing; ``None`` otherwise.
    """

    stage: str
    fraction: float
    counts: TensorCounts | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"stage", "fraction"}``, plus ``tensors_done``, ``tensors_total`` and
        ``bytes_done`` when the event has counts (a sandbox child's progress message)."""
        out: dict[str, Any] = {"stage": self.stage, "fraction": self.fraction}
        if self.counts is not None:
            out |= {
                "tensors_done": self.counts.tensors_done,
                "tensors_total": self.counts.tensors_total,
                "bytes_done": self.counts.bytes_done,
            }
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProgressEvent:
        """The event :meth:`to_json` wrote (extra keys, such as ``event``, are ignored)."""
        counts = None
        if "tensors_done" in data:
            counts = TensorCounts(
                tensors_done=int(data["tensors_done"]),
                tensors_total=int(data["tensors_total"]),
                bytes_done=int(data["bytes_done"]),
            )
        return cls(str(data.get("stage")), float(data.get("fraction", 0.0)), counts)


Progress = Callable[[ProgressEvent], None]


def report_tensor(
    progress: Progress | None, stage: str, *, done: int, total: int, bytes_done: int
) -> None:
    """One more tensor is done: the fraction, with the counts."""
    if progress is None:
        return
    counts = TensorCounts(tensors_done=done, tensors_total=total, bytes_done=bytes_done)
    progress(ProgressEvent(stage, done / max(total, 1), counts))
