"""How a conversion writes its output: one frozen value instead of a bundle of keywords."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

from app.engine.parity_models import ParitySpec

__all__ = [
    "TORCH_SUFFIXES", "CopyMethod", "OutputFormat", "SourceDigest", "WriteOptions",
    "format_for_path",
]  # fmt: skip

OutputFormat = Literal["safetensors", "torch", "dcp"]
CopyMethod = Literal["reflink", "kernel", "buffered"]
SourceDigest = Literal["blake3", "sha256", "none"]

#: Output names that ask for a torch zip; ``.safetensors`` asks for safetensors.
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def format_for_path(path: PurePath) -> OutputFormat | None:
    """The format an output's name asks for, the one rule ``convert`` and ``submit`` share.

    Args:
        path: the output file (or a sharded set's folder).

    Returns:
        ``torch`` for ``.pt``/``.pth``/``.bin``, ``safetensors`` for ``.safetensors``, ``None``
        for any other name (a folder, no suffix): the caller's default.
    """
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == ".safetensors":
        return "safetensors"
    return None


@dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """Options of the write and verify stages.

    Attributes:
        format: ``safetensors`` (default, streamed), ``torch``, or ``dcp`` (a
            ``torch.distributed.checkpoint`` folder, one writer).
        dtype: cast every written tensor to this dtype; ``None`` keeps the recipe's ``dtype``.
        device: where shape ops and model verification run: ``auto`` (CUDA when present),
            ``cpu``, ``cuda``, ``cuda:N``. Resolved once, lazily, by the process doing the work,
            so a byte-copy conversion never imports torch. The output is written from the CPU.
        max_shard_size: write Hugging Face shards of at most this many bytes into a folder.
        folder: write a model folder as ``save_pretrained`` does (``model.safetensors``, or
            shards and their index with ``max_shard_size``), with the ``config.json`` of a
            target architecture that declares one (``hf_config``), so ``from_pretrained``
            loads it as it is.
        verify: re-read the output and compare every fed tensor with its source; for an
            architecture target, also load it into the model and run a forward pass.
        byte_copy: copy unchanged tensors file to file without torch (``False`` forces the
            torch path; both write byte-identical files).
        copy_methods: how byte copies go, tried in order, each dropped once the kernel
            refuses it: ``reflink`` (shared extents), ``kernel`` (``copy_file_range``),
            ``buffered`` (through a page-aligned buffer). All write the same bytes.
        source_digest: the source's identity when the caller does not pass its sha256:
            ``sha256`` (default; one core, ~1.3 s for 2 GB), ``blake3`` (a parallel pass from
            the page cache, ~4x cheaper, ``b3sum``-checkable: the CLI's default), or ``none``
            (no identity, no pass: the CLI's ``--no-verify``).
        parity: run the source's model and the converted one side by side (SPEC §3.2).
        shard_workers: output shards written side by side, when every tensor is a byte copy
            (a rename-only conversion: nothing is materialised, so memory stays flat), each
            verified by its own thread beside its copy; ``None`` is one per CPU (at most
            8), ``1`` is one after the other. The files are the same.
    """

    format: OutputFormat = "safetensors"
    dtype: str | None = None
    device: str = "cpu"
    max_shard_size: int | None = None
    folder: bool = False
    verify: bool = True
    byte_copy: bool = True
    copy_methods: tuple[CopyMethod, ...] = ("reflink", "kernel", "buffered")
    source_digest: SourceDigest = "sha256"
    parity: ParitySpec | None = None
    shard_workers: int | None = None
