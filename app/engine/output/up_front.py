"""What a conversion made only of byte copies knows before it writes a byte.

When every tensor passes through unchanged, each one's digest can be taken from its source
ranges first (BLAKE3 on every core, from the page cache), so the safetensors header is final
before the data follows. Then each output file's sha256, which the attestation needs and which
can only be taken front to back, is taken as the file is written: from the verifier's one read
of the written bytes, or (``--no-verify``) from the source ranges beside the copy
(:mod:`app.engine.output.file_sha256`), and nothing reads the output again afterwards.

The digests stay digests of the written bytes: verification compares every written byte with
the source ranges they were taken from, and digests the written range itself wherever the two
differ.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import blake3

from app.engine.options import WriteOptions
from app.engine.output.digests import VERIFY_WINDOW, hexdigest, ranges_digest, window
from app.engine.plan import Plan, PlanEntry
from app.engine.produce import Producer

__all__ = ["Span", "UpFront", "copy_spans", "record_sums", "up_front"]

Span = tuple[Path, int, int]  # file, offset, length


@dataclass(frozen=True)
class UpFront:
    """Every stored tensor's source ranges, and (verified) their digests, known before writing.

    Attributes:
        spans: target key -> the source ranges its bytes are copied from, in order.
        digests: target key -> ``blake3:<hex>`` of those ranges end to end; empty with
            ``--no-verify`` (which takes no per-tensor digests).
    """

    spans: dict[str, list[Span]]
    digests: dict[str, str]


def copy_spans(entry: PlanEntry, producer: Producer, byte_copy: bool) -> list[Span] | None:
    """The source ranges to copy ``entry`` from byte for byte, or None when it is produced."""
    if not (byte_copy and entry.fed and entry.status in ("loaded", "tied") and not entry.ops):
        return None
    return producer.source.byte_ranges(entry.sources[0]) or None


def up_front(plan: Plan, producer: Producer, options: WriteOptions) -> UpFront | None:
    """The source ranges and digests of a safetensors output made only of byte copies.

    Args:
        plan: an ok plan.
        producer: the source the ranges are found in.
        options: ``byte_copy`` and ``verify`` apply.

    Returns:
        ``None`` when some stored tensor is produced (its digest is known only once it is
        made: the header is then completed after the data, as before).
    """
    spans: dict[str, list[Span]] = {}
    for entry in plan.entries:
        if entry.stored_as is not None:  # a tie stored once: not in the file
            continue
        found = copy_spans(entry, producer, options.byte_copy)
        if found is None:
            return None
        spans[entry.target] = found
    digests = {key: ranges_digest(s) for key, s in spans.items()} if options.verify else {}
    return UpFront(spans, digests)


def record_sums(spans: Mapping[str, Span], *, digests: bool) -> dict[str, tuple[int, str | None]]:
    """Each torch zip record's CRC-32 (its local header, before its data, holds it) and,
    when ``digests``, its ``blake3:<hex>``, from its source range: one read of each range,
    the records side by side on every core (zlib and BLAKE3 release the GIL).

    Args:
        spans: target key -> the one source range its record is copied from.
        digests: also take each range's BLAKE3 (verified conversions).

    Returns:
        target key -> ``(crc32, digest or None)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(span: Span) -> tuple[int, str | None]:
        path, offset, length = span
        crc, h = 0, blake3.blake3() if digests else None
        with Path(path).open("rb", buffering=0) as f:
            done = 0
            while done < length:
                size = min(VERIFY_WINDOW, length - done)
                with window(f.fileno(), offset + done, size) as view:
                    crc = zlib.crc32(view, crc)
                    if h is not None:
                        h.update(view)
                done += size
        return crc, hexdigest(h) if h is not None else None

    keys = list(spans)
    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="graft-sums") as pool:
        return dict(zip(keys, pool.map(one, [spans[k] for k in keys]), strict=True))
