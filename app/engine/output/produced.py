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
    from app.engine.produce import Producer

__all__ = ["write_produced"]


def write_produced(
    entry: PlanEntry, out: OutputFile, producer: Producer, result: Execution
) -> memoryview:
    """Produce ``entry``'s tensor, screen it, append its bytes to ``out`` and record its digest.

    Returns:
        The bytes written (for a caller that also needs, say, their CRC-32).
    """
    from app.engine.produce import check_value

    value = producer.produce(entry)
    if (warning := check_value(entry, value)) is not None:
        result.warnings.append(warning)
    data = tensor_bytes(value)
    out.write_all(data)
    h = hasher()
    h.update(data)
    result.digests[entry.target] = hexdigest(h)
    result.materialised += 1
    return data
