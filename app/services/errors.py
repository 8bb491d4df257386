"""The service layer's errors: :class:`app.errors.GraftError` subclasses with their HTTP status.

One handler in ``app.api.errors`` serves these, the engine's and every other layer's alike.
``NotFoundError`` and ``InvalidJobError`` are the house's (``app.errors``), re-exported here.
"""

from __future__ import annotations

from app.errors import GraftError, InvalidJobError, NotFoundError, TooLargeError

__all__ = [
    "BadRequestError",
    "ConflictError",
    "InvalidJobError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceError",
    "TooManyJobsError",
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


class ConflictError(ServiceError):
    type = "conflict"
    status = 409
    title = "Conflict"


class BadRequestError(ServiceError):
    type = "bad-request"
    status = 400
    title = "Bad request"


class UploadTooLargeError(ServiceError, TooLargeError):
    type = "too-large"
    status = 413
    title = "Upload too large"


class PayloadTooLargeError(ServiceError, TooLargeError):
    """A request body (a skeleton, a recipe) beyond a size, count or nesting cap."""

    type = "too-large"
    status = 413
    title = "Request too large"


class TooManyUploadsError(ServiceError):
    """The concurrent-upload cap (per owner or in all); carries ``Retry-After``."""

    type = "too-many-uploads"
    status = 429
    title = "Too many uploads"


class TooManyJobsError(ServiceError):
    """The owner's cap on queued + running jobs (SPEC §5.3); carries ``Retry-After``."""

    type = "too-many-jobs"
    status = 429
    title = "Too many active jobs"


class UploadTimeoutError(ServiceError):
    """The client stopped sending the body."""

    type = "upload-timeout"
    status = 408
    title = "Upload timed out"


class TooManyRangesError(ServiceError):
    type = "too-many-ranges"
    status = 416
    title = "Range not satisfiable"
