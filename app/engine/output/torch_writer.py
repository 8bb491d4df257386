"""The torch output format: ``torch.save`` of a dict, which holds every tensor at once.

This format cannot be streamed, and it carries no metadata, so nothing is finalised.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.engine.output.digests import tensor_digest
from app.engine.output.execution import Execution
from app.engine.plan import Plan
from app.engine.produce import Producer, check_value
from app.engine.progress import report_tensor

if TYPE_CHECKING:
    import torch

__all__ = ["write_torch"]


def write_torch(
    tmp: Path, plan: Plan, producer: Producer, progress: Callable[[str, float], None] | None
) -> Execution:
    """Produce every target tensor, digest it, and ``torch.save`` the dict to ``tmp``.

    Returns:
        What was written (``files`` is left to the caller, which knows the final name).
    """
    import torch

    result = Execution(format="torch")
    tensors: dict[str, torch.Tensor] = {}
    produced = 0
    for i, entry in enumerate(plan.entries):
        value = producer.produce(entry)
        if (warning := check_value(entry, value)) is not None:
            result.warnings.append(warning)
        result.digests[entry.target] = tensor_digest(value)
        result.materialised += 1
        tensors[entry.target] = value
        produced += value.numel() * value.element_size()
        # torch.save writes at the end: bytes_done counts the tensor bytes produced so far.
        report_tensor(progress, "write", done=i + 1, total=len(plan.entries), bytes_done=produced)
    torch.save(tensors, tmp)
    return result
