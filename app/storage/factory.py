"""Choose and build the blob store from configuration (``GRAFT_STORAGE_URL``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.config import Settings
from app.storage.base import BlobStore
from app.storage.file import FileBlobStore
from app.storage.s3 import S3BlobStore, S3Config

__all__ = ["open_store"]


def open_store(source: Settings | str) -> BlobStore:
    """The blob store that settings (or a storage URL) name.

    Args:
        source: settings, whose ``storage_url`` picks the store (empty: the file store at
            ``storage_dir``); or a URL, ``file:///path`` or ``s3://bucket/prefix``, with the
            rest (S3 endpoint, credentials, local temp space) read from the environment.

    Returns:
        A :class:`~app.storage.FileBlobStore` or an :class:`~app.storage.S3BlobStore`; call
        ``ensure()`` before writing.

    Raises:
        ValueError: the URL is neither form.
    """
    settings = Settings(storage_url=source) if isinstance(source, str) else source
    url = settings.storage_url
    if not url:
        return FileBlobStore(settings.storage_dir)
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
        return FileBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        secret = settings.aws_secret_access_key
        config = S3Config(
            bucket=parts.netloc,
            prefix=unquote(parts.path).strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            part_size=settings.s3_part_size,
            parts_in_order=settings.s3_parts_in_order,
        )
        # One configured local folder (default where the file store keeps it), swept by
        # every worker at start.
        return S3BlobStore(config, scratch=settings.scratch_dir or settings.storage_dir / "tmp")
    raise ValueError(
        f"GRAFT_STORAGE_URL must be file:///absolute/path or s3://bucket/prefix, not {url!r}"
    )
