"""Content-addressed blob storage: one interface, a local directory or an S3 bucket behind it.

Callers build the configured store with :func:`open_store` and use the :class:`BlobStore`
interface; ``GRAFT_STORAGE_URL`` picks ``file:///path`` (the default, ``GRAFT_STORAGE_DIR``)
or ``s3://bucket/prefix``.
"""

from __future__ import annotations

from app.storage.base import BlobInfo, BlobIntegrityError, BlobStore, PartsUpload, check_digest
from app.storage.factory import open_store
from app.storage.file import FileBlobStore
from app.storage.s3 import S3BlobStore, S3Config
from app.storage.staging import StagedFile

__all__ = [
    "BlobInfo",
    "BlobIntegrityError",
    "BlobStore",
    "FileBlobStore",
    "PartsUpload",
    "S3BlobStore",
    "S3Config",
    "StagedFile",
    "check_digest",
    "open_store",
]
