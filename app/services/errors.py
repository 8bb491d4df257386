"""The service layer's errors: :class:`app.errors.GraftError` subclasses with their HTTP status.

One handler in ``app.api.errors`` serves these, the engine's and every other layer's alike.
"""

from __future__ import annotations

from app.errors import GraftError

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
]


class ServiceError(GraftError):
    """Base class of the use cases' refusals: ``type`` and ``status`` go into problem+json."""

    type = "service-error"
    status = 500
    title = "Service error"


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
