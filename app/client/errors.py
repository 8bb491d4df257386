"""The client's errors: one class per kind of problem+json answer, all :class:`GraftAPIError`."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "ConflictError",
    "GraftAPIError",
    "GraftClientError",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "InvalidRequestError",
    "NotFoundError",
    "UnauthorizedError",
    "error_from_response",
]


class GraftClientError(Exception):
    """Anything the client raises: the server could not be reached, or answered an error."""


class GraftAPIError(GraftClientError):
    """The server answered with a problem+json (RFC 9457) error.

    Attributes:
        status: the HTTP status.
        type: the stable problem type (``invalid-recipe``, ``not-found``, …).
        detail: the server's one-line explanation.
        problem: the whole problem document (``rule``, ``errors``, … when present).
    """

    def __init__(self, status: int, type: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(f"{type} ({status}): {detail}")
        self.status = status
        self.type = type
        self.detail = detail
        self.problem = problem


class UnauthorizedError(GraftAPIError):
    """401 or 403: no key, a bad key, or a key without the scope."""


class NotFoundError(GraftAPIError):
    """404: no such resource, or another owner's."""


class ConflictError(GraftAPIError):
    """409: a resource in use, a name taken."""


class IdempotencyConflictError(ConflictError):
    """409 ``idempotency-conflict``: the key was used with another request."""


class IdempotencyInProgressError(ConflictError):
    """409 ``idempotency-in-progress``: the first request with the key is still running."""


class InvalidRequestError(GraftAPIError):
    """422 (or 400, 413): the request or its input was refused; ``problem`` says why."""


_BY_TYPE: dict[str, type[GraftAPIError]] = {
    "idempotency-conflict": IdempotencyConflictError,
    "idempotency-in-progress": IdempotencyInProgressError,
}
_BY_STATUS: dict[int, type[GraftAPIError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
}


def error_from_response(response: httpx.Response) -> GraftAPIError:
    """The typed error for an error response (problem+json, or anything else)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"type": "http-error", "detail": response.text[:200] or response.reason_phrase}
    kind = str(problem.get("type") or "http-error")
    detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    cls = _BY_TYPE.get(kind) or _BY_STATUS.get(response.status_code, GraftAPIError)
    return cls(response.status_code, kind, detail, problem)
