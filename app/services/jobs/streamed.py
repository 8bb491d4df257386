"""Object store to object store: a job that reads its source by ranged GETs and writes its
weights to a multipart upload, with nothing on the worker's disk but small reports.

When the blob store can presign (S3), a job that converts one safetensors file into one
safetensors file, on the CPU, with no model to run the result in, is streamed: the worker
presigns a GET of the source blob and ``UploadPart`` URLs of an upload to a temp key, and its
sandbox child (no credentials, only those URLs) reads, converts and sends the parts
(:mod:`app.services.stream_io`). The worker completes the upload, reads the stored object
back to hash it, and publishes it under its sha256: the artifact row is the one a local
file gives. Anything else takes the local path (:func:`stream_refusal` says why).
"""

from __future__ import annotations

import math
from typing import Any

from app.engine.options import WriteOptions
from app.engine.target_spec import TargetSpec
from app.services.stream_io import RemoteFile, StreamSpec
from app.storage import BlobStore

__all__ = ["STREAM_URL_SECONDS", "part_count", "stream_refusal", "streamed_upload"]

# Presigned URLs outlive the longest job (SigV4 allows at most 7 days).
STREAM_URL_SECONDS = 24 * 3600
# Part URLs presigned per source byte: room for an output four times the source (a cast
# from 8 to 32 bits) before parts grow past the configured size.
_GROWTH = 4
_MAX_PARTS = 10_000


def stream_refusal(
    *,
    source_files: list[tuple[str, str]],
    source_format: str | None,
    template_formats: list[str],
    several: bool,
    target: TargetSpec,
    options: WriteOptions,
    device: str,
    parity: bool,
) -> str | None:
    """Why a job that writes weights cannot stream (it then takes the local path), or
    ``None`` when it can."""
    reasons = [
        (several or len(source_files) != 1, "streaming reads one source file"),
        (source_format != "safetensors", "streaming reads safetensors sources"),
        (template_formats not in ([], ["safetensors"]), "a template is read as one safetensors"),
        (options.format != "safetensors" or options.folder, "streaming writes one safetensors"),
        (device.startswith("cuda"), "streaming runs on the CPU"),
        (parity, "parity runs the output in a model"),
        (target.architecture_ref() is not None, "an architecture target runs the output"),
    ]
    return next((why for refused, why in reasons if refused), None)


def part_count(source_size: int, part_size: int) -> int:
    """How many part URLs to presign for a source of ``source_size`` bytes."""
    return min(_MAX_PARTS, math.ceil(_GROWTH * source_size / part_size) + 2)


def streamed_upload(
    store: BlobStore,
    *,
    source: tuple[str, str, int],
    template: tuple[str, str, int] | None,
    output_name: str,
    read_block: int = 32 << 20,
) -> tuple[StreamSpec, Any] | None:
    """Open the upload and presign what the child needs, or ``None`` when the store cannot.

    Args:
        store: the blob store (S3 presigns; a local store returns ``None``).
        source: the source blob's ``(name, sha256, size)``.
        template: a checkpoint target's one blob, the same way; ``None`` for other targets.
        output_name: the weights file's name.
        read_block: bytes per ranged GET.

    Returns:
        The child's :class:`StreamSpec` and the upload to complete (or close) afterwards.
    """
    source_file = _remote(store, *source)
    template_file = _remote(store, *template) if template is not None else None
    if source_file is None or (template is not None and template_file is None):
        return None
    upload = store.stream_upload(expires_seconds=STREAM_URL_SECONDS)
    if upload is None:
        return None
    size = source[2]
    try:
        spec = StreamSpec(
            source=source_file,
            target=template_file,
            output_name=output_name,
            part_urls=upload.part_urls(part_count(size, upload.part_size)),
            part_size=upload.part_size,
            in_order=upload.in_order,
            read_block=read_block,
        )
    except BaseException:
        upload.close()
        raise
    return spec, upload


def _remote(store: BlobStore, name: str, sha256: str, size: int) -> RemoteFile | None:
    url = store.source_url(sha256, expires_seconds=STREAM_URL_SECONDS)
    return RemoteFile(name=name, url=url, size=size, sha256=sha256) if url else None
