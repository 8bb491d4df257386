"""``s3://bucket/key`` sources, read with the blob store's S3 settings (boto3).

Only buckets listed in ``GRAFT_S3_SOURCE_ALLOW`` may be named (none by default): the endpoint
and credentials are the operator's, so what a key holder may read through them is the
operator's choice, bucket by bucket. The blob store's own bucket and prefix, which hold every
owner's uploads, are refused even when listed.

Credentials are the configured ones only (``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``
in Graft's settings): boto3's chain of ambient credentials (environment, shared files,
profiles, the instance or container role) is never consulted for a source. Without configured
credentials a source is read unsigned, as an anonymous client: a public bucket works, and
nothing the machine's role may read is exposed.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from app.registry.download import DownloadedFile
from app.registry.errors import (
    InvalidReferenceError,
    RegistryNotFoundError,
    SourceTooLargeError,
    SourceUnavailableError,
)

__all__ = ["S3SourceConfig", "fetch_s3", "parse_s3_uri"]

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class S3SourceConfig:
    """How to reach S3 sources, and what they may not name.

    Attributes:
        endpoint_url: the S3-compatible server (``None``: AWS).
        region: the SigV4 signing region.
        access_key_id, secret_access_key: credentials (``None``: requests go unsigned).
        store_bucket, store_prefix: the blob store's own location, refused as a source.
        allowed_buckets: ``GRAFT_S3_SOURCE_ALLOW``: the only buckets a source may name.
    """

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    store_bucket: str | None = None
    store_prefix: str = ""
    allowed_buckets: frozenset[str] = frozenset()


def parse_s3_uri(uri: str, config: S3SourceConfig) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``.

    Raises:
        InvalidReferenceError: no bucket or key, or a key that names a folder.
        PermissionError: a bucket not in ``GRAFT_S3_SOURCE_ALLOW``, or the blob store's own
            bucket and prefix.
    """
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if parts.scheme != "s3" or not bucket or not key or key.endswith("/") or parts.query:
        raise InvalidReferenceError(f"{uri[:200]!r} is not s3://BUCKET/KEY naming one object")
    if bucket not in config.allowed_buckets:
        raise PermissionError(
            f"bucket {bucket!r} is not in GRAFT_S3_SOURCE_ALLOW; the operator lists the buckets "
            "sources may be read from"
        )
    if bucket == config.store_bucket:
        prefix = config.store_prefix.strip("/")
        if not prefix or key == prefix or key.startswith(prefix + "/"):
            raise PermissionError(f"s3://{bucket}/{prefix} is Graft's own blob store")
    return bucket, key


def _client(config: S3SourceConfig) -> Any:
    """An S3 client that signs with the configured keys, or not at all: never ambient ones."""
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.credentials import CredentialResolver
    from botocore.session import Session

    session = Session()
    # No provider at all: nothing from the environment, shared files or an instance role.
    session.register_component("credential_provider", CredentialResolver(providers=[]))
    signed = bool(config.access_key_id and config.secret_access_key)
    options = Config(
        signature_version="s3v4" if signed else UNSIGNED,
        s3={"addressing_style": "path" if config.endpoint_url else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.create_client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        aws_access_key_id=config.access_key_id if signed else None,
        aws_secret_access_key=config.secret_access_key if signed else None,
        config=options,
    )


def _failure(exc: Exception, uri: str) -> Exception:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "NoSuchBucket", "404") or status == 404:
            return RegistryNotFoundError(f"{uri}: no such object")
        retryable = status >= 500 or status == 429
        return SourceUnavailableError(f"{uri}: S3 answered {status} {code}", retryable=retryable)
    return SourceUnavailableError(f"{uri}: cannot reach S3: {exc}")


def fetch_s3(uri: str, dest_dir: Path, *, config: S3SourceConfig, max_bytes: int) -> DownloadedFile:
    """Stream one S3 object into ``dest_dir`` with its sha256, under the size cap.

    Raises:
        InvalidReferenceError: not ``s3://BUCKET/KEY``.
        PermissionError: a bucket not allowed, or the blob store's own location.
        RegistryNotFoundError: no such bucket or key.
        SourceTooLargeError: over ``max_bytes``.
        SourceUnavailableError: S3 failed (``retryable`` says whether to try again).
    """
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:  # boto3 is the `s3` extra
        raise SourceUnavailableError(
            "s3:// sources need boto3 on the worker (pip install 'graft[s3]')", retryable=False
        ) from exc

    bucket, key = parse_s3_uri(uri, config)
    dest = dest_dir / (posixpath.basename(key) or "source")
    part = dest.with_name(dest.name + ".part")
    digest, size = hashlib.sha256(), 0
    try:
        answer = _client(config).get_object(Bucket=bucket, Key=key)
        if int(answer.get("ContentLength") or 0) > max_bytes:
            raise SourceTooLargeError(f"{uri} is over the {max_bytes}-byte cap")
        with part.open("wb") as out:
            for chunk in answer["Body"].iter_chunks(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise SourceTooLargeError(f"{uri} exceeds the {max_bytes}-byte cap")
                digest.update(chunk)
                out.write(chunk)
        part.replace(dest)
    except (BotoCoreError, ClientError) as exc:
        part.unlink(missing_ok=True)
        raise _failure(exc, uri) from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    logger.info("fetched %s (%d bytes)", uri, size)
    return DownloadedFile(path=dest, size=size, sha256=digest.hexdigest())
