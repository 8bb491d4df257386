"""The refusals of the tus 1.0 protocol (SPEC §5.3), as :class:`ServiceError` subclasses."""

from __future__ import annotations

from app.services.errors import ConflictError, ServiceError

__all__ = [
    "ChecksumMismatchError",
    "OffsetMismatchError",
    "TusVersionError",
    "UnsupportedChecksumError",
    "UnsupportedMediaTypeError",
    "UploadBusyError",
]

TUS_VERSION = "1.0.0"


class TusVersionError(ServiceError):
    """A request without ``Tus-Resumable: 1.0.0`` (the only version served)."""

    type = "tus-version"
    status = 412
    title = "Unsupported tus version"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Tus-Version": TUS_VERSION})


class UnsupportedMediaTypeError(ServiceError):
    """A PATCH whose body is not ``application/offset+octet-stream``."""

    type = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"


class OffsetMismatchError(ConflictError):
    """A PATCH's ``Upload-Offset`` is not the upload's current offset (HEAD it first)."""


class UploadBusyError(ConflictError):
    """Another PATCH of the same upload is being received."""


class UnsupportedChecksumError(ServiceError):
    """An ``Upload-Checksum`` with an algorithm other than sha256 (tus: 400)."""

    type = "unsupported-checksum"
    status = 400
    title = "Unsupported checksum algorithm"


class ChecksumMismatchError(ServiceError):
    """A part's bytes do not hash to its ``Upload-Checksum`` (tus' 460); the part is dropped."""

    type = "checksum-mismatch"
    status = 460
    title = "Checksum mismatch"
