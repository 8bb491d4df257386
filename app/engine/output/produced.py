"""One materialised tensor into an output file: produced, checked, written, digested.

Both writers use it: only tensors an op changes (or none could be copied) come through here,
one at a time, so at most one such tensor is alive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.engine.output.digests import hasher, hexdigest, tensor_bytes
from app.engine.output.execution import Execution
from app.engine.output.files import OutputFile
from app.engine.plan import PlanEntry

if TYPE_CHECKING:
    import torch

    from app.engine.produce import Producer

__all__ = ["produce_checked", "write_produced"]


def produce_checked(entry: PlanEntry, producer: Producer, result: Execution) -> torch.Tensor:
    """Produce ``entry``'s tensor, screen it (a NaN/Inf warning into ``result``) and count it."""
    from app.engine.produce import check_value

    value = producer.produce(entry)
    if (warning := check_value(entry, value)) is not None:
        result.warnings.append(warning)
    result.materialised += 1
    return value


def write_produced(
    entry: PlanEntry, out: OutputFile, producer: Producer, result: Execution
) -> memoryview:
    """Produce ``entry``'s tensor, screen it, append its bytes to ``out`` and record its digest.

    Returns:
        The bytes written (for a caller that also needs, say, their CRC-32).
    """
    data = tensor_bytes(produce_checked(entry, producer, result))
    out.write_all(data)
    h = hasher()
    h.update(data)
    result.digests[entry.target] = hexdigest(h)
    return data
