"""The S3 blob store: any S3-compatible server (AWS, MinIO, ``rclone serve s3``), SigV4.

Keys: blobs at ``<prefix>blobs/<ab>/<rest of the digest>``, uploads in flight at
``<prefix>tmp/<host>-<pid>-<random>``, resumable (tus) uploads assembled as multipart uploads
at ``<prefix>parts/<upload id>`` (they outlive any one process; their expiry aborts them).
Publication uploads to a temp key (hashing the bytes as they are sent), checks the digest
and the stored size, then copies server-side to the content key and deletes the temp key:
a content key is only ever written whole, by one ``CopyObject``.

Nothing here needs a shared disk. Uploads and work folders live in local temp space; readers
stream ranged GETs, and :meth:`S3BlobStore.link_into` downloads to a local file (a worker's
work folder, removed with it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.storage.base import BlobInfo, BlobIntegrityError, BlobStore, PartsUpload, check_digest
from app.storage.s3_stream import StreamUpload
from app.storage.s3_upload import MIN_PART_SIZE, FileRange, UploadTarget, send_range, upload_file
from app.storage.staging import Scratch, pid_alive

__all__ = ["S3BlobStore", "S3Config"]

logger = logging.getLogger(__name__)

# S3's largest part; a longer range is sent as several parts of equal size.
_MAX_PART = 5 * 1024**3
# CopyObject copies up to 5 GiB in one call; larger objects are copied in parts.
_COPY_LIMIT = 5 * 1024**3
_COPY_PART = 512 * 1024**2
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where the blobs are and how to reach them.

    Attributes:
        bucket: the bucket (it must exist).
        prefix: a key prefix inside it, so several deployments can share a bucket.
        endpoint_url: the server, for anything but AWS (path-style addressing then).
        region: the SigV4 signing region.
        access_key_id: credentials; ``None`` lets boto3 find them (environment, profile, role).
        secret_access_key: the secret that goes with ``access_key_id``.
        part_size: multipart upload part size in bytes (5 MiB at least).
        upload_threads: parts sent at once.
        parts_in_order: the server takes a multipart upload's parts in order only
            (``rclone serve s3`` streams each to its backend as it comes); AWS and MinIO
            take any order, which saves a streamed job a pass (``app.services.jobs.streamed``).
        temp_grace_seconds: temp keys older than this are swept as abandoned.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    part_size: int = 16 * 1024**2
    upload_threads: int = 4
    parts_in_order: bool = True
    temp_grace_seconds: float = 24 * 3600.0

    def client(self) -> Any:
        """A boto3 S3 client (thread-safe; one per store)."""
        import boto3  # the `s3` extra: only S3 deployments pay for the import
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=max(10, 2 * self.upload_threads),
            # Checksums only where the API requires them: S3-compatible servers differ in
            # which of the newer flexible checksums they accept.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
        )


def _metadata(sha256: str) -> dict[str, str]:
    # AWS dates every write itself; servers built on rclone date an object by its "mtime"
    # (rclone's own convention), even when it is copied onto itself to refresh its date.
    return {"sha256": sha256, "mtime": f"{time.time():.3f}"}


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) in _NOT_FOUND


class S3BlobStore(BlobStore):
    """Blobs in an S3 bucket; local temp space for staging and work folders.

    Args:
        config: bucket, prefix, endpoint and credentials.
        scratch: the local temp directory of this host.
    """

    def __init__(self, config: S3Config, *, scratch: Path) -> None:
        super().__init__(Scratch(scratch))
        self.config = config
        self.bucket = config.bucket
        self.prefix = f"{config.prefix.strip('/')}/" if config.prefix.strip("/") else ""
        self._client = config.client()
        # Temp keys carry the host, so a sweep can tell this host's dead writers at once.
        self._host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"

    def __repr__(self) -> str:
        return f"S3BlobStore('s3://{self.bucket}/{self.prefix}')"

    # --- keys -----------------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        """The object key of a blob."""
        check_digest(sha256)
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256[2:]}"

    def _temp_key(self) -> str:
        return f"{self.prefix}tmp/{self._host}-{os.getpid()}-{secrets.token_hex(8)}"

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise
        return head

    def _copy(self, source: str, dest: str, sha256: str) -> None:
        from boto3.s3.transfer import TransferConfig

        self._client.copy(
            {"Bucket": self.bucket, "Key": source},
            self.bucket,
            dest,
            ExtraArgs={"Metadata": _metadata(sha256), "MetadataDirective": "REPLACE"},
            Config=TransferConfig(multipart_threshold=_COPY_LIMIT, multipart_chunksize=_COPY_PART),
        )

    # --- lifecycle ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``OSError`` unless the bucket answers and local temp space is writable."""
        self.scratch.check()
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise OSError(f"s3://{self.bucket}: {exc}") from exc

    def cleanup_orphans(self) -> int:
        """Remove local temp entries of dead processes, and temp keys whose writer is gone:
        this host's dead processes at once, any host's once ``temp_grace_seconds`` old."""
        removed = super().cleanup_orphans()
        cutoff = time.time() - self.config.temp_grace_seconds
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}tmp/"):
            for item in page.get("Contents", []):
                if self._abandoned(item["Key"], item["LastModified"].timestamp(), cutoff):
                    self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        removed += self._abort_stale_uploads(cutoff)
        if removed:
            logger.info("removed %d orphan temp entries of %r", removed, self)
        return removed

    def _abandoned(self, key: str, modified: float, cutoff: float) -> bool:
        # "<host>-<pid>-<random>"; host names may hold "-", so split from the right.
        host, _, pid = key.rsplit("/", 1)[-1].rpartition("-")[0].rpartition("-")
        if host == self._host and pid.isdigit() and not pid_alive(int(pid)):
            return True
        return modified < cutoff

    def _abort_stale_uploads(self, cutoff: float) -> int:
        # A writer killed mid-upload leaves parts that cost storage but no key. Not every
        # S3-compatible server lists them (rclone's does not); there, its own expiry applies.
        try:
            uploads = self._client.list_multipart_uploads(
                Bucket=self.bucket, Prefix=f"{self.prefix}tmp/"
            ).get("Uploads", [])
        except Exception as exc:
            logger.debug("cannot list multipart uploads of %r: %s", self, exc)
            return 0
        aborted = 0
        for upload in uploads:
            if self._abandoned(upload["Key"], upload["Initiated"].timestamp(), cutoff):
                with contextlib.suppress(Exception):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    # --- writing --------------------------------------------------------------------------

    def publish(self, staged: Path, sha256: str) -> None:
        """Upload to a temp key, verify digest and size, copy to the content key.

        Raises:
            BlobIntegrityError: the file's bytes do not hash to ``sha256``, or the server
                stored another size; nothing is published.
        """
        key = self.key(sha256)
        if self._head(key) is not None:
            # Same digest, same bytes. Copied onto itself to refresh its date: the start-up
            # sweep spares young blobs whose record may be in flight.
            self._copy(key, key, sha256)
            staged.unlink(missing_ok=True)
            return
        temp = self._temp_key()
        target = UploadTarget(
            self.bucket,
            temp,
            _metadata(sha256),
            self.config.part_size,
            self.config.upload_threads,
        )
        try:
            digest, size = upload_file(self._client, target, staged)
            if digest != sha256:
                raise BlobIntegrityError(f"{staged} hashes to {digest}, not {sha256}")
            stored = (self._head(temp) or {}).get("ContentLength")
            if stored != size:
                raise BlobIntegrityError(f"{temp} holds {stored} bytes, {size} were sent")
            self._copy(temp, key, sha256)
        finally:
            with contextlib.suppress(Exception):
                self._client.delete_object(Bucket=self.bucket, Key=temp)
        staged.unlink(missing_ok=True)

    # --- blobs sent in parts ---------------------------------------------------------------

    min_part_size = MIN_PART_SIZE

    def open_parts(self, name: str) -> PartsUpload | None:
        """A multipart upload at ``<prefix>parts/<name>``."""
        key = f"{self.prefix}parts/{name}"
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata={"mtime": f"{time.time():.3f}"}
        )["UploadId"]
        return PartsUpload(key, str(upload_id))

    def send_part(self, upload: PartsUpload, path: Path, start: int, stop: int) -> None:
        """``UploadPart`` straight from the staged file (one part, or equal parts of at most
        5 GiB for a longer range)."""
        count = -(-(stop - start) // _MAX_PART)
        step = -(-(stop - start) // count)
        for begin in range(start, stop, step):
            end = min(begin + step, stop)
            number = len(upload.parts) + 1
            with FileRange(path, begin, end) as body:
                etag = send_range(self._client, self.bucket, upload.key, upload.upload_id,
                                  number, body)  # fmt: skip
            upload.parts.append([number, etag, end - begin])
            upload.sent += end - begin

    def publish_parts(self, upload: PartsUpload, sha256: str, size: int) -> None:
        """``CompleteMultipartUpload``, check the stored size, copy to the content key.

        Raises:
            BlobIntegrityError: the parts sent or stored do not add up to ``size``.
        """
        key = self.key(sha256)
        if self._head(key) is not None:  # same digest, same bytes: refresh its date
            self._copy(key, key, sha256)
            self.abort_parts(upload)
            return
        if upload.sent != size:
            self.abort_parts(upload)
            raise BlobIntegrityError(f"{upload.sent} bytes were sent in parts, not {size}")
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in upload.parts]
                },
            )
        except BaseException:
            self.abort_parts(upload)
            raise
        try:
            stored = (self._head(upload.key) or {}).get("ContentLength")
            if stored != size:
                raise BlobIntegrityError(f"{upload.key} holds {stored} bytes, {size} were sent")
            self._copy(upload.key, key, sha256)
        finally:
            with contextlib.suppress(Exception):
                self._client.delete_object(Bucket=self.bucket, Key=upload.key)

    def abort_parts(self, upload: PartsUpload) -> None:
        """``AbortMultipartUpload`` (an upload already completed or aborted: nothing)."""
        with contextlib.suppress(Exception):
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
            )

    def delete(self, sha256: str) -> None:
        """Remove a blob (callers make sure nothing references it)."""
        self._client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    # --- reading --------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self._head(self.key(sha256)) is not None

    def modified(self, sha256: str) -> float | None:
        """The object's LastModified (refreshed by every publish), or None."""
        head = self._head(self.key(sha256))
        return None if head is None else float(head["LastModified"].timestamp())

    def blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob."""
        base = f"{self.prefix}blobs/"
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                head, _, rest = item["Key"][len(base) :].partition("/")
                sha = head + rest
                if len(head) != 2 or len(sha) != 64:
                    continue
                yield BlobInfo(sha, item["Size"], item["LastModified"].timestamp())

    def iter_range(
        self, sha256: str, start: int, stop: int, *, chunk_size: int = 1024 * 1024
    ) -> Iterator[bytes]:
        """Stream bytes ``[start, stop)`` with one ranged GET.

        Raises:
            FileNotFoundError: no such blob.
            BlobIntegrityError: the server sent another length than asked for.
        """
        if stop <= start:
            return
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.key(sha256), Range=f"bytes={start}-{stop - 1}"
            )
        except Exception as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"no blob {sha256} in {self!r}") from exc
            raise
        if response["ContentLength"] != stop - start:
            # A server that ignores Range would send the whole object; never pass it on.
            response["Body"].close()
            raise BlobIntegrityError(
                f"asked for {stop - start} bytes of {sha256}, got {response['ContentLength']}"
            )
        body = response["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def link_into(self, sha256: str, dest: Path) -> None:
        """Download the blob to ``dest``, checking its digest on the way.

        Raises:
            FileNotFoundError: no such blob.
            OSError: ``ENOSPC`` when the local disk cannot hold it (checked before starting).
            BlobIntegrityError: the bytes did not hash to ``sha256``; ``dest`` is removed.
        """
        head = self._head(self.key(sha256))
        if head is None:
            raise FileNotFoundError(f"no blob {sha256} in {self!r}")
        size = int(head["ContentLength"])
        free = shutil.disk_usage(dest.parent).free
        if free < size:
            raise OSError(
                errno.ENOSPC, f"{size} bytes of blob {sha256} do not fit in {free} free", dest
            )
        digest = hashlib.sha256()
        try:
            with dest.open("xb") as fh:
                for chunk in self.iter_range(sha256, 0, size):
                    digest.update(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != sha256:
                raise BlobIntegrityError(f"blob {sha256} downloaded as {digest.hexdigest()}")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def source_url(self, sha256: str, *, expires_seconds: int) -> str | None:
        """A presigned GET of the blob (ranged GETs work on it too)."""
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(sha256)},
            ExpiresIn=expires_seconds,
        )
        return url

    def stream_upload(self, *, expires_seconds: int) -> StreamUpload:
        """A multipart upload to a new temp key, for parts sent by presigned URLs."""
        return StreamUpload(self, self._temp_key(), expires_seconds=expires_seconds)

    def presigned_url(
        self, sha256: str, *, filename: str, media_type: str, expires_seconds: int = 600
    ) -> str | None:
        """A presigned GET that downloads as ``filename`` with ``media_type``."""
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(sha256),
                "ResponseContentDisposition": _attachment(filename),
                "ResponseContentType": media_type,
            },
            ExpiresIn=expires_seconds,
        )
        return url


def _attachment(filename: str) -> str:
    from urllib.parse import quote

    return f"attachment; filename*=utf-8''{quote(filename)}"
