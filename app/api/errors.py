"""One place maps every error to ``application/problem+json`` (RFC 9457).

``type`` is a stable slug (``unsafe-checkpoint``, ``invalid-recipe``, ``not-found`` …) that
clients can switch on; ``detail`` says what was wrong and how to fix it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import GraftError

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_RESPONSES",
    "install_error_handlers",
    "problem",
    "problem_response",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TYPE_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    416: "range-not-satisfiable",
    422: "validation-error",
    503: "not-ready",
}


_PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI response entry whose body is problem+json."""
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}


# Documented on every /v1 resource route: what any of them may answer besides success.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("malformed request (body, form or file name)"),
    401: problem("an API key is required (once keys exist), or it is unknown or revoked"),
    403: problem("the key lacks the scope this needs"),
    404: problem("no such resource, or it belongs to another owner"),
    422: problem("invalid parameters or body, or the input was refused"),
}


def problem_response(
    status: int,
    problem_type: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": problem_type,
        "title": title or problem_type.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _graft_error(request: Request, exc: Exception) -> JSONResponse:
    """Any error of the house: its class gives the status, type and title."""
    assert isinstance(exc, GraftError)
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="graft"'
    return problem_response(
        exc.status,
        exc.type,
        exc.message,
        title=exc.problem_title(),
        instance=request.url.path,
        headers=headers or None,
        **exc.extra,
    )


def _sentence(error: dict[str, Any]) -> str:
    """One sentence naming the field: ``target must have one of …; got 'architecure'``."""
    loc = [str(p) for p in error.get("loc", ())]
    where = ".".join(loc[1:] if loc[:1] == ["body"] and len(loc) > 1 else loc)
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "invalid_target":
        # The discriminator names the three kinds; say what was sent instead.
        given = error.get("input")
        got = (
            ", ".join(repr(k) for k in given) or "an empty object"
            if isinstance(given, dict)
            else f"a {type(given).__name__}, not an object"
        )
        return f"{message}; got {got}"
    return f"{where}: {message}" if where else message


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    raw = exc.errors()
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in raw
    ]
    detail = _sentence(raw[0]) if raw else "invalid request"
    content_type = request.headers.get("content-type", "")
    if raw and list(raw[0].get("loc", ()))[:1] == ["body"] and "json" not in content_type:
        # The usual cause of "Input should be a valid dictionary": curl -d without a header.
        detail += (
            f" (the body was sent as {content_type or 'no content type'}; "
            "send JSON with `content-type: application/json`)"
        )
    return problem_response(
        422, "validation-error", detail, instance=request.url.path, errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem_response(
        exc.status_code,
        _TYPE_BY_STATUS.get(exc.status_code, "http-error"),
        str(exc.detail),
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500,
        "internal-error",
        "an unexpected error occurred; see the server log",
        instance=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GraftError, _graft_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
