"""Tell the formats apart by their first bytes, and name the usual non-checkpoint files."""

from __future__ import annotations

from pathlib import Path

from app.engine.errors import UnreadableCheckpointError
from app.engine.readers.base import Reader
from app.engine.readers.safetensors_file import SafetensorsReader
from app.engine.readers.torch_legacy import LegacyReader
from app.engine.readers.torch_zip import ZipReader

__all__ = ["open_reader"]


def _sniff(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnreadableCheckpointError(f"cannot read {path.name}: {exc.strerror}") from None
    if size == 0:
        raise UnreadableCheckpointError(f"{path.name} is empty")
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch-zip"
    # safetensors first: a header of 640..1535 bytes starts with the bytes 80 02..05, which
    # is also how a pickle starts; a legacy torch pickle never has "{" at offset 8.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    kind = _known_non_checkpoint(head)
    raise UnreadableCheckpointError(
        f"{path.name} is not a checkpoint"
        + (f": it looks like {kind}" if kind else "")
        + " (expected torch.save zip, legacy pickle or safetensors)"
    )


def _known_non_checkpoint(head: bytes) -> str | None:
    signatures = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"%PDF": "a PDF document",
        b"\x1f\x8b": "a gzip stream",
        b"\x93NUMPY": "a NumPy array",
        b"\x08\x01\x12": "an ONNX model",
        b"\x89HDF": "an HDF5 (Keras) file",
    }
    for magic, kind in signatures.items():
        if head.startswith(magic):
            return kind
    if head[:1] in (b"{", b"["):
        return "JSON text"
    return None


def open_reader(path: Path) -> Reader:
    fmt = _sniff(path)
    if fmt == "torch-zip":
        return ZipReader(path)
    if fmt == "torch-legacy":
        return LegacyReader(path)
    return SafetensorsReader(path)
