"""What writing a plan produced: per-key digests, counts, warnings and the output check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from app.engine.options import OutputFormat
    from app.engine.output.overlap import CopiedTensor
    from app.engine.rederive import Rederived
    from app.engine.verify import OutputCheck
    from app.engine.warning import Warning

__all__ = ["DIGEST_PLACEHOLDER", "Execution"]

# Metadata digests are written as this first and rewritten in place once known (same length).
DIGEST_PLACEHOLDER = "0" * 64


@dataclass
class Execution:
    """What writing produced: per-key digests, warnings and the verification outcome.

    Attributes:
        format: the output format written.
        digests: target key -> ``blake3:<hex>`` of the bytes written for it.
        warnings: report warnings found while writing (``nan_or_inf: <key>``).
        copied: tensors that took the byte-copy path.
        materialised: tensors that went through torch.
        files: output file names (one, or shards + index).
        copy_methods: bytes byte-copied per method (``reflink``, ``kernel``, ``buffered``).
        copied_from: target key -> (file, offset, length) of the source ranges a byte-copied
            tensor came from, in order (several for a DCP tensor saved in chunks), kept when
            verifying: verification digests the written range and compares it with these.
        verified_copies: byte-copied tensors checked while the copy went on (digest,
            finiteness, equality with the source, see :mod:`app.engine.output.overlap`):
            verification takes them instead of reading those ranges again.
        file_sha256: output file (its path as written) -> sha256 of the whole file, taken
            while it was written (see :mod:`app.engine.output.file_sha256`); a file not
            here is hashed by whoever needs its digest.
        check: the re-read of the output, or ``None`` when verification was off.
        rederived: the tensors not byte-copied, re-derived from the source (see
            ``app.engine.rederive``), or ``None`` when verification was off.
    """

    format: OutputFormat
    digests: dict[str, str] = field(default_factory=dict)
    warnings: list[Warning] = field(default_factory=list)
    copied: int = 0
    materialised: int = 0
    files: list[str] = field(default_factory=list)
    copy_methods: dict[str, int] = field(default_factory=dict)
    copied_from: dict[str, list[tuple[Path, int, int]]] = field(default_factory=dict)
    verified_copies: dict[str, CopiedTensor] = field(default_factory=dict)
    file_sha256: dict[Path, str] = field(default_factory=dict)
    check: OutputCheck | None = None
    rederived: Rederived | None = None
