"""The service layer's errors. Each carries the HTTP status and the stable problem ``type``.

Engine errors (``GraftError``) keep their own ``type``; :func:`status_for_type` gives their
HTTP status, so one handler in ``app.api.errors`` serves both.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequestError",
    "ConflictError",
    "InvalidJobError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceError",
    "TooManyRangesError",
    "TooManyUploadsError",
    "UploadTimeoutError",
    "UploadTooLargeError",
    "status_for_type",
]

_STATUS_BY_TYPE = {
    "unsafe-checkpoint": 422,
    "unreadable-checkpoint": 422,
    "invalid-recipe": 422,
    "invalid-target": 422,
    "conversion-refused": 422,
    "too-large": 413,
}


def status_for_type(problem_type: str) -> int:
    """HTTP status for an engine error type (422 when unknown: the input was refused)."""
    return _STATUS_BY_TYPE.get(problem_type, 422)


class ServiceError(Exception):
    """Base class: ``type`` and ``status`` go straight into problem+json."""

    type: str = "service-error"
    status: int = 500
    title: str = "Service error"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra


class NotFoundError(ServiceError):
    type = "not-found"
    status = 404
    title = "Not found"


class ConflictError(ServiceError):
    type = "conflict"
    status = 409
    title = "Conflict"


class BadRequestError(ServiceError):
    type = "bad-request"
    status = 400
    title = "Bad request"


class UploadTooLargeError(ServiceError):
    type = "too-large"
    status = 413
    title = "Upload too large"


class PayloadTooLargeError(ServiceError):
    """A request body (a skeleton, a recipe) beyond a size, count or nesting cap."""

    type = "too-large"
    status = 413
    title = "Request too large"


class TooManyUploadsError(ServiceError):
    """The concurrent-upload cap (per owner or in all); carries ``Retry-After``."""

    type = "too-many-uploads"
    status = 429
    title = "Too many uploads"


class InvalidJobError(ServiceError):
    """A job request that names checkpoints or targets that cannot be used."""

    type = "invalid-job"
    status = 422
    title = "Invalid job"


class UploadTimeoutError(ServiceError):
    """The client stopped sending the body."""

    type = "upload-timeout"
    status = 408
    title = "Upload timed out"


class TooManyRangesError(ServiceError):
    type = "too-many-ranges"
    status = 416
    title = "Range not satisfiable"
