"""The streaming safetensors writer: one file, or Hugging Face shards and their index.

The header is known from the plan, so it is written first and the bytes follow in order:
memory stays bounded by the largest materialised tensor plus a constant. Tensors whose bytes
pass through unchanged (loaded, same dtype, laid out in C order in the source) are copied file
to file in the kernel, adjacent ones as one range, without torch (and, verified, checked on a
second thread while the next range is copied: :mod:`app.engine.output.overlap`); the others
are produced one at a time, then freed. Shards whose tensors are all byte copies are written
side by side, a thread each (verified, each with its own verifier: every core copies and
checks). The metadata is written with placeholders of the final lengths
and rewritten once the digests are known.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from app.engine.errors import GraftError
from app.engine.meta import DTYPE_SIZES
from app.engine.options import CopyMethod, WriteOptions
from app.engine.output.execution import Execution
from app.engine.output.file_sha256 import SourceSha256, complete_digests
from app.engine.output.files import OutputFile, rewrite_at
from app.engine.output.kernel_copy import KernelCopier
from app.engine.output.overlap import CopyRuns, CopyVerifier
from app.engine.output.produced import write_produced
from app.engine.output.up_front import UpFront, copy_spans
from app.engine.plan import Plan, PlanEntry
from app.engine.produce import Producer
from app.engine.progress import Progress, report_tensor
from app.engine.readers import SAFETENSORS_DTYPES

__all__ = [
    "INDEX_NAME",
    "MAX_SHARD_WORKERS",
    "SINGLE_NAME",
    "Layout",
    "TensorSpec",
    "finalize_safetensors",
    "header_bytes",
    "shard_names",
    "split_shards",
    "write_index",
    "write_safetensors",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_ST_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
T = TypeVar("T")
# Shards written side by side by default, at most: each writer maps two 8 MiB windows (its
# verifier's) and holds a file open, so memory stays bounded on a many-core machine.
MAX_SHARD_WORKERS = 8
TensorSpec = tuple[str, Sequence[int], str]  # key, shape, dtype


@dataclass
class Layout:
    """Where a safetensors output's headers are, to rewrite them with the final metadata."""

    paths: list[Path]
    shards: list[list[PlanEntry]]
    headers: list[bytes]
    names: list[str] | None  # shard file names, or None for a single file


def shard_names(count: int) -> list[str]:
    """Hugging Face shard names: ``model-00001-of-00003.safetensors`` …"""
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_safetensors(
    tmp: Path,
    plan: Plan,
    producer: Producer,
    options: WriteOptions,
    metadata: dict[str, str],
    progress: Progress | None,
    upfront: UpFront | None = None,
) -> tuple[Execution, Layout]:
    """Stream every target tensor into ``tmp`` (a file, or a folder of shards).

    Args:
        tmp: the temp file, or the temp folder when ``options.max_shard_size`` or
            ``options.folder`` is set.
        plan: an ok plan.
        producer: makes the tensors that cannot be byte-copied.
        options: ``max_shard_size``, ``byte_copy``, ``copy_methods`` and ``verify`` apply
            here. Byte-copied tensors are digested and scanned for NaN by verification, in
            its one read of the output; without it, nothing passes over their bytes at all.
        metadata: the ``__metadata__`` with placeholders (see :func:`finalize_safetensors`),
            or final when ``upfront`` is given.
        progress: called with a ``ProgressEvent``.
        upfront: every tensor's source ranges and digests, when all are byte copies and
            ``metadata`` is final: each file's sha256 is then taken as it is written
            (``Execution.file_sha256``) and the verifier compares instead of digesting.

    Returns:
        What was written, and where the headers are.
    """
    result = Execution(format="safetensors")
    sharded = options.max_shard_size is not None or options.folder  # tmp is a folder
    # A tied duplicate stored once is not written (``stored_as``: transformers re-ties it).
    shards = _split([e for e in plan.entries if e.stored_as is None], options.max_shard_size)
    # As `save_pretrained`: a set that fits in one shard is a lone `model.safetensors`.
    indexed = sharded and len(shards) > 1
    names = shard_names(len(shards)) if indexed else [SINGLE_NAME if sharded else tmp.name]
    paths = [tmp / n for n in names] if sharded else [tmp]
    headers = [_header(entries, metadata) for entries in shards]
    jobs = [
        _Shard(path, entries, header)
        for path, entries, header in zip(paths, shards, headers, strict=True)
    ]
    used = _write_shards(jobs, producer, options, result, progress, upfront)
    if not options.verify:  # nothing will compare them
        result.copied_from.clear()
    result.copy_methods = {str(k): v for k, v in used.items()}
    layout = Layout(paths, shards, headers, names if indexed else None)
    if indexed:
        _write_index(tmp, names, shards, metadata)
        result.files = [*names, INDEX_NAME]
    else:
        result.files = names  # the caller names a single file's final path
    return result, layout


@dataclass
class _Shard:
    """One output file to write: its path, its tensors in order and its header."""

    path: Path
    entries: list[PlanEntry]
    header: bytes


class _Tally:
    """Progress across shards written side by side (reported under a lock)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total = progress, max(total, 1)
        self.done = self.bytes_before = 0
        self._lock = threading.Lock()

    def tensor(self, out: OutputFile) -> None:
        with self._lock:
            self.done += 1
            report_tensor(
                self.progress,
                "write",
                done=self.done,
                total=self.total,
                bytes_done=self.bytes_before + out.written,
            )

    def file_done(self, out: OutputFile) -> None:
        with self._lock:
            self.bytes_before += out.written


def _write_shards(
    jobs: list[_Shard],
    producer: Producer,
    options: WriteOptions,
    result: Execution,
    progress: Progress | None,
    upfront: UpFront | None,
) -> dict[CopyMethod, int]:
    """Write every shard: side by side when each of their tensors is a byte copy (the copies
    run in the kernel, so the threads share no Python work and hold nothing in memory), else
    one after the other. Returns the bytes copied per method."""
    tally = _Tally(progress, sum(len(j.entries) for j in jobs))
    workers = min(len(jobs), options.shard_workers or _default_workers(options, upfront))
    spans: list[list[list[tuple[Path, int, int]] | None]] | None = None
    if upfront is not None:
        spans = [[upfront.spans[e.target] for e in j.entries] for j in jobs]
    elif workers > 1:
        spans = [[copy_spans(e, producer, options.byte_copy) for e in j.entries] for j in jobs]
    if workers > 1 and spans is not None and all(s for shard in spans for s in shard):
        return _write_parallel(jobs, spans, producer, options, result, tally, workers, upfront)
    # Verified, byte copies are checked on a second thread while the next bytes are copied.
    runs = _copy_runs(options, upfront)
    try:
        for i, job in enumerate(jobs):
            found = spans[i] if spans is not None else None
            _write_shard(job, found, producer, runs, result, options.byte_copy, tally, upfront)
        _finish(runs, result)
    finally:
        _close(runs)
    return runs.copier.used


def _copy_runs(options: WriteOptions, upfront: UpFront | None) -> CopyRuns:
    """One writer's copier: verified, with a verifier beside it; else, when the files'
    sha256 is taken as they are written (``upfront``), with a hasher beside it."""
    verifier = CopyVerifier() if options.verify else None
    hasher = SourceSha256() if verifier is None and upfront is not None else None
    return CopyRuns(KernelCopier(options.copy_methods), verifier, hasher)


def _finish(runs: CopyRuns, result: Execution) -> None:
    """Wait for the verifier or hasher; record what they found in ``result``."""
    if runs.verifier is not None:
        result.verified_copies = runs.verifier.finish()
    result.file_sha256.update(complete_digests(runs.file_sha256()))


def _close(runs: CopyRuns) -> None:
    runs.close()
    if runs.verifier is not None:
        runs.verifier.close()


def _default_workers(options: WriteOptions, upfront: UpFront | None = None) -> int:
    """One writer per CPU, unless the source's identity is hashed beside the copy: BLAKE3
    then takes every core already, and shards side by side measured slower (bench/shards.py).
    With every digest taken before the copy (``upfront``) nothing runs beside the copies but
    each file's verifier, whose sha256 cannot be split: one shard per core spreads them."""
    if options.source_digest != "none" and upfront is None:
        return 1
    return min(os.cpu_count() or 1, MAX_SHARD_WORKERS)


def _write_parallel(
    jobs: list[_Shard],
    spans: list[list[list[tuple[Path, int, int]] | None]],
    producer: Producer,
    options: WriteOptions,
    result: Execution,
    tally: _Tally,
    workers: int,
    upfront: UpFront | None,
) -> dict[CopyMethod, int]:
    """:func:`_write_shards` with a thread per shard (``workers`` at a time); each shard's
    record is merged into ``result`` in shard order, so the result is the sequential one's."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[Execution, dict[CopyMethod, int]]:
        part = Execution(format=result.format)
        runs = _copy_runs(options, upfront)
        try:
            job = jobs[i]
            _write_shard(job, spans[i], producer, runs, part, options.byte_copy, tally, upfront)
            _finish(runs, part)
        finally:
            _close(runs)
        return part, runs.copier.used

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-shard") as pool:
        parts = list(pool.map(one, range(len(jobs))))
    used: dict[CopyMethod, int] = {}
    for part, part_used in parts:
        result.copied += part.copied
        result.copied_from.update(part.copied_from)
        result.verified_copies.update(part.verified_copies)
        result.file_sha256.update(part.file_sha256)
        for method, n in part_used.items():
            used[method] = used.get(method, 0) + n
    return used


def _write_shard(
    job: _Shard,
    spans: list[list[tuple[Path, int, int]] | None] | None,
    producer: Producer,
    runs: CopyRuns,
    result: Execution,
    byte_copy: bool,
    tally: _Tally,
    upfront: UpFront | None = None,
) -> None:
    """Write one shard: its header, then each tensor copied through or produced (with
    ``upfront``, the header is final and every tensor a copy: the file's sha256 is taken
    as it is written)."""
    out = OutputFile(job.path)
    digests = upfront.digests if upfront is not None else {}
    try:
        out.write_all(struct.pack("<Q", len(job.header)) + job.header)
        if upfront is not None:
            runs.hash_file(out)
        for i, entry in enumerate(job.entries):
            found = spans[i] if spans is not None else copy_spans(entry, producer, byte_copy)
            _write_one(entry, out, producer, runs, result, found, digests.get(entry.target))
            tally.tensor(out)
        runs.flush(out)
    finally:
        tally.file_done(out)
        out.close()


def _write_one(
    entry: PlanEntry,
    out: OutputFile,
    producer: Producer,
    runs: CopyRuns,
    result: Execution,
    spans: list[tuple[Path, int, int]] | None,
    expected: str | None = None,
) -> None:
    """Copy one tensor's bytes through (``spans``), or produce it and take its digest (a byte
    copy's digest is taken by verification, from the written range, or given as
    ``expected``, taken of its source ranges, for verification to prove)."""
    if spans:
        # One range, or a DCP tensor's chunks end to end.
        runs.add_tensor(out, entry.target, list(spans), entry.dtype, expected)
        result.copied_from[entry.target] = spans
        result.copied += 1
        return
    runs.flush(out)
    write_produced(entry, out, producer, result)


def finalize_safetensors(folder: Path, layout: Layout, final: dict[str, str]) -> list[Path]:
    """Rewrite every header that changed (same length) and the index with the final
    metadata; returns the files rewritten."""
    rewritten = []
    for path, entries, header in zip(layout.paths, layout.shards, layout.headers, strict=True):
        new = _header(entries, final)
        if len(new) != len(header):
            raise GraftError("internal error: output header changed size while finalising")
        if new != header:
            rewrite_at(path, 8, new)
            rewritten.append(path)
    if layout.names is not None:
        _write_index(folder, layout.names, layout.shards, final)
    return rewritten


def _nbytes(e: PlanEntry) -> int:
    return math.prod(e.shape) * DTYPE_SIZES[e.dtype]


def header_bytes(tensors: Iterable[TensorSpec], metadata: dict[str, str]) -> bytes:
    """A safetensors header's JSON, padded to 8 bytes, without its length prefix.

    Args:
        tensors: ``(key, shape, dtype)`` in the file's order; the offsets follow from them.
        metadata: The ``__metadata__`` strings.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, shape, dtype in tensors:
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        header[key] = {
            "dtype": _ST_CODES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return raw + b" " * (-len(raw) % 8)


def split_shards(items: list[T], nbytes: Callable[[T], int], max_size: int | None) -> list[list[T]]:
    """Split ``items`` in order into shards of at most ``max_size`` bytes (one if None).

    A shard always takes at least one item, however large, as ``save_pretrained`` does.
    """
    if max_size is None:
        return [items]
    shards: list[list[T]] = [[]]
    size = 0
    for item in items:
        n = nbytes(item)
        if shards[-1] and size + n > max_size:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    return shards


def write_index(
    folder: Path, weight_map: dict[str, str], total_size: int, metadata: dict[str, str]
) -> None:
    """Write Hugging Face's ``model.safetensors.index.json`` into ``folder``."""
    index = {"metadata": {"total_size": total_size, **metadata}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _header(entries: list[PlanEntry], metadata: dict[str, str]) -> bytes:
    return header_bytes(((e.target, e.shape, e.dtype) for e in entries), metadata)


def _split(entries: list[PlanEntry], max_shard_size: int | None) -> list[list[PlanEntry]]:
    return split_shards(entries, _nbytes, max_shard_size)


def _write_index(
    folder: Path, names: list[str], shards: list[list[PlanEntry]], metadata: dict[str, str]
) -> None:
    weight_map = {
        e.target: name for name, entries in zip(names, shards, strict=True) for e in entries
    }
    total = sum(_nbytes(e) for entries in shards for e in entries)
    write_index(folder, weight_map, total, metadata)
