"""A safetensors output streamed into the parts of an upload, never a local file.

The header is known from the plan, so the output's bytes come in order: the header, then
each tensor. They are cut into parts of a fixed size; every part but the first goes to the
caller's :class:`PartSink` as soon as it fills (the sink uploads it, a multipart upload's
part). The first part, which holds the header, is kept until the end: the header's metadata
takes its final digests then (same length), and the first part goes last. Memory holds two
parts here, plus what the sink has in flight and the source's read-ahead.

Tensors whose bytes pass through unchanged are read from the source's
:class:`~app.engine.readers.ReadAhead` a step at a time and appended; the others are
produced, one at a time, as for a local file. Verification cannot re-read the output, so it
checks the bytes as they land in the part buffer: a byte copy's bytes are compared with the
source's (and digested, and screened for NaN/Inf), a produced tensor's with the tensor's own
bytes and then re-derived from the source (:mod:`app.engine.rederive`); the strict-load
check runs on the header. Whoever completes the upload hashes what was stored.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.engine.errors import GraftError
from app.engine.meta import DTYPE_SIZES, TensorInfo, guess_kind
from app.engine.options import WriteOptions
from app.engine.output.digests import all_finite, hasher, hexdigest, same_bytes, tensor_bytes
from app.engine.output.execution import Execution
from app.engine.output.produced import produce_checked
from app.engine.output.safetensors_writer import header_bytes
from app.engine.output.up_front import copy_spans
from app.engine.plan import Plan, PlanEntry
from app.engine.produce import Producer
from app.engine.progress import Progress, report_tensor
from app.engine.readers import ReadAhead
from app.engine.rederive import Rederived, rederive
from app.engine.verify import OutputCheck, strict_load_check
from app.engine.warning import Warning

__all__ = ["PartSink", "StreamedOutput", "write_streamed"]

_STEP = 8 << 20  # bytes of a byte copy read from the source at a time


class PartSink(Protocol):
    """Where the parts of a streamed output go (a multipart upload, say).

    Attributes:
        part_size: the size of every part but the last (the writer chooses a larger one
            when the header needs it, or when the output would take more than
            ``max_parts``; every part but the last then has that size).
        max_parts: the most parts it takes.
    """

    part_size: int
    max_parts: int

    def put(self, number: int, data: bytearray) -> None:
        """Take part ``number`` (from 1; the first comes last unless the sink has a true
        ``in_order`` attribute). May block while earlier parts are still in flight; ``data``
        is not touched again by the writer."""
        ...


@dataclass(frozen=True)
class StreamedOutput:
    """A safetensors output streamed to ``sink``, named ``name`` in the report."""

    name: str
    sink: PartSink


class _Parts:
    """An append-only byte stream cut into parts, each handed to the sink as it fills; with
    ``hold_first``, the first is kept until :meth:`finish` (its header is rewritten then)."""

    def __init__(self, sink: PartSink, part_size: int, *, hold_first: bool) -> None:
        self.sink, self.part_size, self.hold_first = sink, part_size, hold_first
        self.first: bytearray | None = None
        self.buffer = bytearray()
        self.number = 1
        self.position = 0

    def write_all(self, data: bytes | bytearray | memoryview, *, compare: bool = False) -> bool:
        """Append ``data``. With ``compare``, also check that the bytes now in the part
        buffer are ``data`` (``memcmp``); returns whether they are (``True`` otherwise)."""
        view = memoryview(data).cast("B")
        equal = True
        while view:
            take = view[: self.part_size - len(self.buffer)]
            start = len(self.buffer)
            self.buffer += take
            if compare:
                with memoryview(self.buffer) as landed:
                    equal = same_bytes(landed[start:], take) and equal
            view = view[len(take) :]
            self.position += len(take)
            if len(self.buffer) == self.part_size:
                self._emit()
        return equal

    def _emit(self) -> None:
        if self.number == 1 and self.hold_first:
            self.first = self.buffer
        else:
            self.sink.put(self.number, self.buffer)
        self.buffer = bytearray()
        self.number += 1

    def finish(self, head: bytes) -> None:
        """Send the last part; a held first part goes after it, ``head`` (length prefix and
        final header) over its start."""
        if self.first is None and self.hold_first:  # everything fits in one part
            self.buffer[: len(head)] = head
        if self.buffer or self.number == 1:
            self.sink.put(self.number, self.buffer)
        if self.first is not None:
            self.first[: len(head)] = head
            self.sink.put(1, self.first)
        self.first, self.buffer = None, bytearray()


class _Discard:
    """A sink that drops every part (the digest pass of an in-order upload)."""

    part_size = max_parts = 0

    def put(self, number: int, data: bytearray) -> None:
        return None


def write_streamed(
    plan: Plan,
    producer: Producer,
    output: StreamedOutput,
    *,
    options: WriteOptions,
    metadata: dict[str, str],
    finalize: Callable[[Execution], dict[str, str]],
    progress: Progress | None = None,
) -> Execution:
    """Stream every target tensor, as one safetensors file, into ``output``'s parts.

    A sink that takes parts in any order (S3) gets the first part last, its header final.
    One that takes them in order only (``in_order``: ``rclone serve s3`` streams each part
    to its backend as it comes) gets them in order, after a first pass that only takes the
    digests the final header needs (every tensor read or produced twice).

    Args:
        plan: an ok plan.
        producer: makes the tensors that are not byte copies.
        output: the sink and the name of the file.
        options: ``byte_copy`` and ``verify`` apply (one file: no shards, no folder).
        metadata: the ``__metadata__`` with placeholders of the final lengths.
        finalize: ``finalize(execution)`` gives the final metadata (see ``write.Stamp``).
        progress: called with a ``ProgressEvent``.

    Returns:
        What was written: the same digests and counts as a local file's, the check.

    Raises:
        GraftError: a source range to copy is not in the source's read-ahead file, or the
            two passes of an in-order upload disagree.
    """
    entries = [e for e in plan.entries if e.stored_as is None]
    header = _header(entries, metadata)
    total = 8 + len(header) + sum(math.prod(e.shape) * DTYPE_SIZES[e.dtype] for e in entries)
    sink = output.sink
    size = max(sink.part_size, 8 + len(header), -(-total // sink.max_parts))
    in_order = bool(getattr(sink, "in_order", False))
    first: Execution | None = None
    if in_order:
        digests_only = _Parts(_Discard(), size, hold_first=False)
        first = _write(plan, entries, producer, digests_only, options, None, full=False)
        header = _header(entries, finalize(first))
    parts = _Parts(sink, size, hold_first=not in_order)
    parts.write_all(struct.pack("<Q", len(header)) + header)
    result = _write(plan, entries, producer, parts, options, progress, full=True)
    final = _header(entries, finalize(result))
    if len(final) != len(header) or (first is not None and final != header):
        raise GraftError(
            "internal error: the output's header changed while finalising (an op that is "
            "not deterministic, or a source that changed between two reads)"
        )
    parts.finish(struct.pack("<Q", len(final)) + final)
    result.files = [output.name]
    return result


def _header(entries: list[PlanEntry], metadata: dict[str, str]) -> bytes:
    return header_bytes(((e.target, e.shape, e.dtype) for e in entries), metadata)


def _write(
    plan: Plan,
    entries: list[PlanEntry],
    producer: Producer,
    parts: _Parts,
    options: WriteOptions,
    progress: Progress | None,
    *,
    full: bool,
) -> Execution:
    """One pass over the tensors into ``parts``: digests always (as the local writer takes
    them); with ``full``, the checks too (bytes compared, re-derivation, strict load)."""
    result = Execution(format="safetensors")
    check = OutputCheck() if options.verify else None
    rederived = Rederived() if full and check is not None else None
    nonfinite: list[str] = []
    for i, entry in enumerate(entries):
        spans = copy_spans(entry, producer, options.byte_copy)
        if spans:
            equal = _copy(entry, spans, producer, parts, result, check, nonfinite, full)
        else:
            equal = _produce(entry, producer, parts, result, rederived)
        if check is not None and entry.fed:
            check.checked += 1
            if equal:
                check.equal += 1
            else:
                check.unequal.append(entry.target)
        if full:
            report_tensor(progress, "write", done=i + 1, total=len(entries),
                          bytes_done=parts.position)  # fmt: skip
    if check is not None:
        result.digests.update(check.digests)
        if full:
            written = {e.target: TensorInfo(e.target, e.shape, e.dtype,
                                            guess_kind(e.target, e.dtype))
                       for e in plan.entries}  # fmt: skip
            check.strict_load, check.strict_error = strict_load_check(producer.target, written)
            result.warnings += [Warning(kind="nan_or_inf", message=key) for key in nonfinite]
            result.check, result.rederived = check, rederived
    return result


def _copy(
    entry: PlanEntry,
    spans: list[tuple[Path, int, int]],
    producer: Producer,
    parts: _Parts,
    result: Execution,
    check: OutputCheck | None,
    nonfinite: list[str],
    compare: bool,
) -> bool:
    """Append a byte-copied tensor's source ranges; digest and screen them when verifying
    (and, with ``compare``, check the part buffer's bytes against them).

    Returns:
        Whether the part buffer holds exactly the source's bytes.
    """
    remote = producer.source.remote_file(entry.sources[0])
    if not isinstance(remote, ReadAhead):
        raise GraftError(f"internal error: {entry.target} has no remote source to stream from")
    digest, finite, equal = hasher(), True, True
    for _, offset, length in spans:
        done = 0
        while done < length:
            chunk = bytearray(min(_STEP, length - done))
            remote.read_at(offset + done, memoryview(chunk))
            equal = parts.write_all(chunk, compare=compare and check is not None) and equal
            if check is not None:
                digest.update(chunk)
                finite = finite and all_finite(memoryview(chunk), entry.dtype)
            done += len(chunk)
    result.copied += 1
    result.copy_methods["stream"] = result.copy_methods.get("stream", 0) + sum(s[2] for s in spans)
    if check is not None:
        check.digests[entry.target] = hexdigest(digest)
        if not finite:
            nonfinite.append(entry.target)
    return equal


def _produce(
    entry: PlanEntry,
    producer: Producer,
    parts: _Parts,
    result: Execution,
    rederived: Rederived | None,
) -> bool:
    """Append a produced tensor and record its digest; re-derive it when verifying.

    Returns:
        Whether the part buffer holds exactly the tensor's bytes.
    """
    value = produce_checked(entry, producer, result)
    data = tensor_bytes(value)
    equal = parts.write_all(data, compare=rederived is not None)
    h = hasher()
    h.update(data)
    result.digests[entry.target] = hexdigest(h)
    if rederived is not None:
        how, problem = rederive(entry, value, producer.source, producer.target)
        rederived.how[how] += 1
        if problem is not None:
            rederived.unequal.append(f"{entry.target}: {problem}")
    return equal
