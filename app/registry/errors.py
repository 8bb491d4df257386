"""Errors of sources by reference and of the model registry.

Each carries the stable problem ``type``, an HTTP status for the API, and ``retryable``: whether
running the same job again may succeed (the worker uses it to decide between a retry and a
failure). Refusals by the outbound guard are :class:`app.net.outbound.OutboundRefusedError`.
All are :class:`app.errors.GraftError` subclasses.
"""

from __future__ import annotations

from app.errors import GraftError, InvalidJobError, NotFoundError, TooLargeError

__all__ = [
    "InvalidReferenceError",
    "RegistryError",
    "RegistryNotFoundError",
    "RegistryUnavailableError",
    "SourceTooLargeError",
    "SourceUnavailableError",
]


class RegistryError(GraftError):
    """Base class; also raised as is when the registry refuses a request (4xx) for a reason
    Graft did not anticipate (a bad token, a parameter it rejects): its message is quoted."""

    type = "registry-error"
    status = 502
    title = "Registry error"
    retryable: bool = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, error_code: str = ""
    ) -> None:
        super().__init__(message)
        # MLflow's own code (RESOURCE_ALREADY_EXISTS…), when the error is MLflow's answer.
        self.error_code = error_code
        if retryable is not None:
            self.retryable = retryable


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or failed (connection, timeout, 5xx, 429)."""

    type = "registry-unavailable"
    status = 503
    title = "Registry unavailable"
    retryable = True


class SourceUnavailableError(RegistryError):
    """A source URL could not be fetched (connection, timeout, or an error status)."""

    type = "source-unavailable"
    status = 502
    title = "Source unavailable"
    retryable = True


class RegistryNotFoundError(RegistryError, NotFoundError):
    """The model, version, alias or artifact does not exist."""

    type = "not-found"
    status = 404
    title = "Not found"


class InvalidReferenceError(RegistryError, InvalidJobError):
    """A reference Graft cannot use: a malformed ``models:/`` URI, a reserved alias, a version
    whose artifacts hold no checkpoint or several."""

    type = "invalid-job"
    status = 422
    title = "Invalid job"


class SourceTooLargeError(RegistryError, TooLargeError):
    """The source is larger than the size cap."""

    type = "too-large"
    status = 413
    title = "Source too large"
