"""The DCP output format: a ``torch.distributed.checkpoint`` folder, as one writer saves it.

Every target tensor is produced in turn and appended to ``__0_0.distcp`` as its own
``torch.save`` record (what DCP's ``FileSystemWriter`` writes for each chunk); the
``.metadata`` pickle, built from torch's own metadata classes, comes last. The folder loads
with ``torch.distributed.checkpoint.load`` into the target model's state dict (to resume
training on a new architecture), and Graft reads it back as a source. One tensor is alive at
a time.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from app.engine.output.digests import tensor_digest
from app.engine.output.execution import Execution
from app.engine.output.files import OutputFile
from app.engine.output.produced import produce_checked
from app.engine.plan import Plan
from app.engine.produce import Producer
from app.engine.progress import Progress, report_tensor

__all__ = ["DCP_DATA_FILE", "DCP_FILES", "write_dcp"]

DCP_DATA_FILE = "__0_0.distcp"
DCP_FILES = [".metadata", DCP_DATA_FILE]
_DCP_VERSION = "1.0.0"  # torch.distributed.checkpoint.filesystem.CURRENT_DCP_VERSION


class _Appender:
    """A write-only stream over an :class:`OutputFile` that counts what went through it."""

    def __init__(self, out: OutputFile) -> None:
        self._out = out
        self.position = 0

    def write(self, data: bytes | memoryview) -> int:
        self._out.write_all(data)
        self.position += len(data)
        return len(data)

    def flush(self) -> None:
        """Writes are unbuffered here."""


def write_dcp(tmp: Path, plan: Plan, producer: Producer, progress: Progress | None) -> Execution:
    """Write every target tensor into the folder ``tmp`` as a single-writer DCP checkpoint.

    Args:
        tmp: the temp folder.
        plan: an ok plan.
        producer: makes every tensor (each record is a ``torch.save`` zip: nothing is
            byte-copied).
        progress: called with a ``ProgressEvent``.

    Returns:
        What was written (``files`` is the folder's two file names).
    """
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    result = Execution(format="dcp")
    state: dict[str, TensorStorageMetadata] = {}
    storage: dict[MetadataIndex, _StorageInfo] = {}
    out = OutputFile(tmp / DCP_DATA_FILE)
    try:
        stream = _Appender(out)
        written = 0
        for i, entry in enumerate(plan.entries):
            value = produce_checked(entry, producer, result).detach().contiguous()
            if value.untyped_storage().nbytes() != value.numel() * value.element_size():
                value = value.clone()  # torch.save writes a view's whole storage
            result.digests[entry.target] = tensor_digest(value)
            start = stream.position
            torch.save(value, stream)  # type: ignore[arg-type]
            origin = torch.Size([0] * value.dim())
            state[entry.target] = TensorStorageMetadata(
                TensorProperties(dtype=value.dtype),
                value.size(),
                [ChunkStorageMetadata(offsets=origin, sizes=value.size())],
            )
            storage[MetadataIndex(entry.target, origin, 0)] = _StorageInfo(
                DCP_DATA_FILE, start, stream.position - start
            )
            written += value.numel() * value.element_size()
            del value
            report_tensor(
                progress, "write", done=i + 1, total=len(plan.entries), bytes_done=written
            )
    finally:
        out.close()
    metadata = Metadata(
        state_dict_metadata=dict(state),
        planner_data={key: (key,) for key in state},
        storage_data=storage,
        version=_DCP_VERSION,
    )
    (tmp / ".metadata").write_bytes(pickle.dumps(metadata))
    result.files = list(DCP_FILES)
    return result
