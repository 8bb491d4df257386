"""An S3 multipart upload that someone without the store's credentials fills, by presigned
``UploadPart`` URLs, and that the store completes, checks and publishes itself.

A job's sandbox child streams its output this way (``app.services.jobs.streamed``): the
worker opens the upload on a temp key and presigns a URL per part number; the child ``PUT``s
the parts and names their ETags; the worker completes the upload, then reads the stored
object back, hashing it (the child's word on its digest is never taken), and copies it to
its content key as :meth:`~app.storage.S3BlobStore.publish` does. A failed or abandoned
upload is aborted; one a dead worker left behind is swept with the store's temp keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from app.storage.base import BlobIntegrityError

if TYPE_CHECKING:
    from app.storage.s3 import S3BlobStore

__all__ = ["StreamUpload"]

logger = logging.getLogger(__name__)

_READ_CHUNK = 8 << 20


class StreamUpload:
    """One multipart upload to a temp key of ``store``, for parts sent by presigned URLs.

    Args:
        store: the S3 store it publishes into.
        temp_key: the temp key it uploads to (see ``S3BlobStore._temp_key``).
        expires_seconds: how long the presigned part URLs work.

    Attributes:
        part_size: the store's part size (``S3Config.part_size``: S3 wants 5 MiB at least,
            bar the last part; ``rclone serve s3`` takes smaller ones).
        in_order: the server takes the parts in order only (``S3Config.parts_in_order``).
    """

    def __init__(self, store: S3BlobStore, temp_key: str, *, expires_seconds: int) -> None:
        self.store = store
        self.key = temp_key
        self.expires_seconds = expires_seconds
        self._client = store._client
        self.part_size = store.config.part_size
        self.in_order = store.config.parts_in_order
        self.upload_id: str = self._client.create_multipart_upload(
            Bucket=store.bucket, Key=temp_key
        )["UploadId"]
        self._open = True

    def part_urls(self, count: int) -> list[str]:
        """Presigned ``UploadPart`` URLs for parts 1..``count`` (S3 allows 10,000)."""
        return [
            self._client.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.store.bucket,
                    "Key": self.key,
                    "UploadId": self.upload_id,
                    "PartNumber": number,
                },
                ExpiresIn=self.expires_seconds,
            )
            for number in range(1, count + 1)
        ]

    def complete(self, parts: list[tuple[int, str]]) -> tuple[str, int]:
        """Complete the upload with ``(part number, ETag)`` pairs, hash what was stored, and
        publish it under its sha256.

        Returns:
            ``(sha256, size)`` of the stored bytes.

        Raises:
            BlobIntegrityError: the server stored another length than it serves.
        """
        try:
            self._client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]
                },
            )
            self._open = False
            sha256, size = self._read_back()
            if self.store._head(self.store.key(sha256)) is None:
                self.store._copy(self.key, self.store.key(sha256), sha256)
            else:  # same bytes: refresh its date, as publish does
                self.store._copy(self.store.key(sha256), self.store.key(sha256), sha256)
        finally:
            self.close()
        return sha256, size

    def _read_back(self) -> tuple[str, int]:
        response = self._client.get_object(Bucket=self.store.bucket, Key=self.key)
        digest, size = hashlib.sha256(), 0
        body = response["Body"]
        try:
            for chunk in body.iter_chunks(_READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        if size != response["ContentLength"]:
            raise BlobIntegrityError(
                f"{self.key}: read {size} bytes of {response['ContentLength']}"
            )
        return digest.hexdigest(), size

    def close(self) -> None:
        """Abort the upload if it was not completed, and remove the temp key (idempotent)."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
                )
        with contextlib.suppress(Exception):
            self._client.delete_object(Bucket=self.store.bucket, Key=self.key)

    def __enter__(self) -> StreamUpload:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()
