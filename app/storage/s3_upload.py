"""Upload one local file to S3, hashing the bytes in the same pass as they are sent.

Files up to one part go up in a single ``PutObject``; larger ones as a multipart upload whose
parts are read in order (so the sha256 needs no second pass) and sent by a few threads, with at
most ``threads`` parts in memory. A failed upload is aborted, so no parts linger.

:func:`send_range` sends one part of a multipart upload that outlives the request (a tus
upload's part, straight from its staged file).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MIN_PART_SIZE", "FileRange", "UploadTarget", "send_range", "upload_file"]

logger = logging.getLogger(__name__)

# S3's limits: parts of 5 MiB at least (bar the last), 10,000 parts at most.
MIN_PART_SIZE = 5 * 1024 * 1024
_MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where an upload goes and how it is cut.

    Attributes:
        bucket: the bucket.
        key: the object key.
        metadata: ``x-amz-meta-*`` headers to store with the object.
        part_size: the part size (grown for files that would need more than 10,000 parts).
        threads: parts sent at once.
    """

    bucket: str
    key: str
    metadata: dict[str, str]
    part_size: int
    threads: int = 4


def upload_file(client: Any, target: UploadTarget, path: Path) -> tuple[str, int]:
    """Upload ``path`` to ``target``.

    Args:
        client: a boto3 S3 client.
        target: bucket, key, metadata and part size.
        path: the local file.

    Returns:
        ``(sha256, size)`` of the bytes sent.
    """
    size = path.stat().st_size
    part_size = max(target.part_size, MIN_PART_SIZE, math.ceil(size / _MAX_PARTS))
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= part_size:
            data = fh.read()
            digest.update(data)
            client.put_object(
                Bucket=target.bucket, Key=target.key, Body=data, Metadata=target.metadata
            )
            return digest.hexdigest(), len(data)
        sent = _multipart(client, target, fh, part_size, digest)
    return digest.hexdigest(), sent


def _multipart(client: Any, target: UploadTarget, fh: Any, part_size: int, digest: Any) -> int:
    upload_id = client.create_multipart_upload(
        Bucket=target.bucket, Key=target.key, Metadata=target.metadata
    )["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        pending: deque[Future[dict[str, Any]]] = deque()
        sent = 0
        with ThreadPoolExecutor(max_workers=target.threads) as pool:
            number = 0
            while chunk := fh.read(part_size):
                digest.update(chunk)
                sent += len(chunk)
                number += 1
                pending.append(pool.submit(_part, client, target, upload_id, number, chunk))
                # Bounded memory: wait for the oldest part before reading past `threads` parts.
                if len(pending) >= target.threads:
                    parts.append(pending.popleft().result())
            parts.extend(f.result() for f in pending)
        client.complete_multipart_upload(
            Bucket=target.bucket,
            Key=target.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=target.bucket, Key=target.key, UploadId=upload_id)
        raise
    logger.debug("uploaded %s in %d parts", target.key, len(parts))
    return sent


def _part(
    client: Any, target: UploadTarget, upload_id: str, number: int, data: bytes
) -> dict[str, Any]:
    response = client.upload_part(
        Bucket=target.bucket, Key=target.key, UploadId=upload_id, PartNumber=number, Body=data
    )
    return {"PartNumber": number, "ETag": response["ETag"]}


class FileRange(io.RawIOBase):
    """Bytes ``[start, stop)`` of a local file as a seekable stream: an ``UploadPart`` body
    read from the file as it is sent, never all in memory."""

    def __init__(self, path: Path, start: int, stop: int) -> None:
        super().__init__()
        self._fh = path.open("rb")
        self.start, self.stop = start, stop
        self._fh.seek(start)

    def __len__(self) -> int:
        return self.stop - self.start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell() - self.start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self.start, io.SEEK_CUR: self._fh.tell(), io.SEEK_END: self.stop}
        self._fh.seek(min(max(base[whence] + offset, self.start), self.stop))
        return self.tell()

    def read(self, size: int | None = -1) -> bytes:
        left = self.stop - self._fh.tell()
        if size is None or size < 0 or size > left:
            size = left
        return self._fh.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def send_range(
    client: Any, bucket: str, key: str, upload_id: str, number: int, body: FileRange
) -> str:
    """``UploadPart`` ``number`` of ``upload_id`` from ``body``; its ETag."""
    response = client.upload_part(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=number,
        Body=body,
        ContentLength=len(body),
    )
    return str(response["ETag"])
