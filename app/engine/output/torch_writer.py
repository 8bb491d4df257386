"""The torch output format, streamed: a zip whose ``data/N`` records are written tensor by
tensor (unchanged ones copied in the kernel), and the pickle last.

It loads with ``torch.load(weights_only=True)``, like ``torch.save`` of the same dict, and
memory stays bounded as for safetensors. A dtype ``torch.save`` pickles without a typed
storage class (float8, uint16-64) takes the old path: every tensor produced, then
``torch.save`` of the dict.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from app.engine.meta import DTYPE_SIZES
from app.engine.options import WriteOptions
from app.engine.output.digests import RangeCrcs, tensor_digest
from app.engine.output.execution import Execution
from app.engine.output.file_sha256 import SourceSha256, complete_digests
from app.engine.output.files import OutputFile
from app.engine.output.kernel_copy import KernelCopier
from app.engine.output.overlap import CopyRuns, CopyVerifier
from app.engine.output.produced import produce_checked, write_produced
from app.engine.output.torch_zip_writer import STORAGE_TYPES, ZipRecords, state_dict_pickle
from app.engine.output.up_front import Span, record_sums
from app.engine.plan import Plan, PlanEntry
from app.engine.produce import Producer
from app.engine.progress import Progress, ProgressEvent, report_tensor

if TYPE_CHECKING:
    import torch

__all__ = ["write_torch"]


def write_torch(
    tmp: Path, plan: Plan, producer: Producer, options: WriteOptions, progress: Progress | None
) -> Execution:
    """Write every target tensor to ``tmp`` as a torch zip checkpoint.

    Args:
        tmp: the temp file.
        plan: an ok plan.
        producer: makes the tensors that cannot be byte-copied.
        options: ``byte_copy``, ``copy_methods`` and ``verify`` apply, as for safetensors.
        progress: called with a ``ProgressEvent``.

    Returns:
        What was written (``files`` is left to the caller, which knows the final name).
    """
    if any(e.dtype not in STORAGE_TYPES for e in plan.entries):
        return _write_with_torch_save(tmp, plan, producer, progress)
    copies = {e.target: _copy_span(e, producer, options.byte_copy) for e in plan.entries}
    if all(copies.values()):
        return _write_copies(tmp, plan, copies, options, progress)  # type: ignore[arg-type]
    result = Execution(format="torch")
    copier = KernelCopier(options.copy_methods)
    # The zip needs the CRC of every record, verified or not. Verified, a copied record's CRC
    # comes from the same read of the written bytes that checks them, on a second thread
    # while the next record is copied; not verified, from its source range, on a second
    # thread too (:class:`RangeCrcs`).
    verifier = CopyVerifier(crc=True) if options.verify else None
    runs = CopyRuns(copier, verifier)
    crcs = _Crcs()
    out = OutputFile(tmp)
    try:
        zip_ = ZipRecords(out)
        records: dict[str, int] = {}
        for i, entry in enumerate(plan.entries):
            index = zip_.begin(f"data/{i}", math.prod(entry.shape) * DTYPE_SIZES[entry.dtype])
            span = copies[entry.target]
            if span:
                path, offset, length = span
                if verifier is None:
                    out.copy_from(copier, crcs.fd(path), offset, length)
                    crcs.ranges.submit(index, path, offset, length)
                else:
                    runs.add_tensor(out, entry.target, [span], entry.dtype)
                    runs.flush(out)  # the next record's header follows
                    result.copied_from[entry.target] = [span]
                    records[entry.target] = index
                result.copied += 1
            else:
                crc = zlib.crc32(write_produced(entry, out, producer, result))
                zip_.set_crc(index, crc)
            if progress:
                progress(ProgressEvent("write", (i + 1) / max(len(plan.entries), 1)))
        for index, crc in crcs.ranges.finish().items():
            zip_.set_crc(index, crc)
        if verifier is not None:
            result.verified_copies = verifier.finish()
            for key, index in records.items():
                zip_.set_crc(index, result.verified_copies[key].crc or 0)
        _close_archive(zip_, plan)
    finally:
        crcs.close()
        runs.close()
        if verifier is not None:
            verifier.close()
        out.close()
    result.copy_methods = {str(k): v for k, v in copier.used.items()}
    return result


def _copy_span(entry: PlanEntry, producer: Producer, byte_copy: bool) -> Span | None:
    """The one source range ``entry``'s record is copied from, or None when it is produced."""
    if not (byte_copy and entry.fed and entry.status == "loaded" and not entry.ops):
        return None
    return producer.source.byte_range(entry.sources[0])


def _write_copies(
    tmp: Path,
    plan: Plan,
    spans: dict[str, Span],
    options: WriteOptions,
    progress: Progress | None,
) -> Execution:
    """:func:`write_torch` when every record is a byte copy: each record's CRC-32 (and,
    verified, its digest) is taken from its source range first, so every byte is final as
    it is written and the file's sha256 is taken on the way (``Execution.file_sha256``):
    verified, from the verifier's read of the written bytes, which compares them with the
    source instead of digesting them again; else from the source ranges beside the copy."""
    result = Execution(format="torch")
    sums = record_sums(spans, digests=options.verify)
    verifier = CopyVerifier() if options.verify else None
    hasher = SourceSha256() if verifier is None else None
    runs = CopyRuns(KernelCopier(options.copy_methods), verifier, hasher)
    out = OutputFile(tmp)
    try:
        zip_ = ZipRecords(out)
        runs.hash_file(out)
        for i, entry in enumerate(plan.entries):
            span, (crc, digest) = spans[entry.target], sums[entry.target]
            at = out.position
            zip_.begin(f"data/{i}", math.prod(entry.shape) * DTYPE_SIZES[entry.dtype], crc)
            runs.hash_written(out, at)
            runs.add_tensor(out, entry.target, [span], entry.dtype, digest)
            runs.flush(out)  # the next record's header follows
            if options.verify:
                result.copied_from[entry.target] = [span]
            result.copied += 1
            if progress:
                progress(ProgressEvent("write", (i + 1) / max(len(plan.entries), 1)))
        at = out.position
        _close_archive(zip_, plan)
        runs.hash_written(out, at)
        if verifier is not None:
            result.verified_copies = verifier.finish()
        result.file_sha256.update(complete_digests(runs.file_sha256()))
    finally:
        runs.close()
        if verifier is not None:
            verifier.close()
        out.close()
    result.copy_methods = {str(k): v for k, v in runs.copier.used.items()}
    return result


class _Crcs:
    """Copied records' CRC-32 (:class:`RangeCrcs`), and the source files they are copied from."""

    def __init__(self) -> None:
        self.ranges = RangeCrcs()
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        import os

        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        import os

        self.ranges.abort()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _write_with_torch_save(
    tmp: Path, plan: Plan, producer: Producer, progress: Progress | None
) -> Execution:
    """Produce every target tensor, digest it, and ``torch.save`` the dict to ``tmp``."""
    import torch

    result = Execution(format="torch")
    tensors: dict[str, torch.Tensor] = {}
    produced = 0
    for i, entry in enumerate(plan.entries):
        value = produce_checked(entry, producer, result)
        result.digests[entry.target] = tensor_digest(value)
        tensors[entry.target] = value
        produced += value.numel() * value.element_size()
        # torch.save writes at the end: bytes_done counts the tensor bytes produced so far.
        report_tensor(progress, "write", done=i + 1, total=len(plan.entries), bytes_done=produced)
    torch.save(tensors, tmp)
    return result


def _close_archive(zip_: ZipRecords, plan: Plan) -> None:
    """Write the records after the tensors' (the state dict's pickle, the format's
    markers, as ``torch.save`` writes them) and the zip's central directory."""
    pkl = state_dict_pickle([(e.target, e.dtype, e.shape) for e in plan.entries])
    zip_.write("data.pkl", pkl)
    zip_.write(".format_version", b"1")
    zip_.write("byteorder", b"little")
    zip_.write("version", b"3\n")
    zip_.close()
