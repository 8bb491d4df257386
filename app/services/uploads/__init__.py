"""Resumable uploads over tus 1.0 (SPEC §5.3): state in the staging area, the use cases."""

from app.services.uploads.service import (
    PartChecksum,
    begin_part,
    complete_upload,
    create_upload,
    finish_part,
    parse_checksum,
    parse_metadata,
)
from app.services.uploads.state import PartWriter, ResumableUploads, UploadInfo

__all__ = [
    "PartChecksum",
    "PartWriter",
    "ResumableUploads",
    "UploadInfo",
    "begin_part",
    "complete_upload",
    "create_upload",
    "finish_part",
    "parse_checksum",
    "parse_metadata",
]
