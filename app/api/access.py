"""Who may reach which route, decided before a request body is read.

One pure ASGI middleware runs in front of every route. For a route that needs a key it reads
only the ``Authorization`` header, checks it (in a thread: it is a database read) and answers
401/403 at once, so an anonymous client cannot make the API read, buffer or parse a body. A
request that passes carries its :class:`~app.services.auth.Principal` in the ASGI scope for
the route's dependencies. Bodies that are not streamed uploads are then read up to
``GRAFT_MAX_JSON_BYTES``; beyond that the answer is 413 ``too-large`` and the rest is never read.

The public routes (SPEC §5.1) and the streamed-body routes are listed here, in one place:
a route added elsewhere needs a key unless it is named below.
"""

from __future__ import annotations

import json
import logging

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.app_context import context_of
from app.services.auth import Principal, authenticate, resolve_mode
from app.services.errors import ServiceError

__all__ = [
    "PRINCIPAL_SCOPE_KEY",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "PUBLIC_ROUTES",
    "STREAMED_BODY_PREFIXES",
    "STREAMED_BODY_ROUTES",
    "AccessMiddleware",
    "is_public",
]

logger = logging.getLogger(__name__)

PRINCIPAL_SCOPE_KEY = "graft.principal"

# Never need a key (SPEC §5.1): probes, the web app and its assets, the API's own description,
# the auth mode itself, and signed links (their signature is the credential).
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/v1/auth"}
)
PUBLIC_PREFIXES = ("/web/", "/v1/schemas/", "/v1/links/")
# Public by path and method: authenticated by something other than an API key.
PUBLIC_ROUTES = frozenset(
    {
        ("POST", "/v1/hooks/mlflow"),  # X-MLflow-Signature
        ("OPTIONS", "/v1/uploads"),  # tus discovery: the protocol's capabilities only
    }
)
# Bodies streamed to disk by their route, under GRAFT_MAX_UPLOAD_BYTES, never buffered here.
STREAMED_BODY_ROUTES = frozenset({("POST", "/v1/checkpoints")})
# The same, by path prefix: a tus PATCH (``/v1/uploads/{id}``) streams its part to disk.
STREAMED_BODY_PREFIXES = (("PATCH", "/v1/uploads/"),)

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PROBLEM_JSON = b"application/problem+json"


def is_public(method: str, path: str) -> bool:
    """Whether ``method path`` is served without an API key."""
    return (
        path in PUBLIC_PATHS
        or path.startswith(PUBLIC_PREFIXES)
        or (method.upper(), path) in PUBLIC_ROUTES
    )


def _streamed(method: str, path: str) -> bool:
    """Whether the route streams its own body (never buffered here)."""
    return (method, path) in STREAMED_BODY_ROUTES or any(
        method == m and path.startswith(prefix) for m, prefix in STREAMED_BODY_PREFIXES
    )


async def _problem(
    send: Send,
    status: int,
    problem_type: str,
    detail: str,
    *,
    path: str,
    headers: dict[str, str] | None = None,
) -> None:
    title = problem_type.replace("-", " ").capitalize()
    body = json.dumps(
        {
            "type": problem_type,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": path,
        },
        separators=(",", ":"),  # as every other problem+json the API sends
        ensure_ascii=False,
    ).encode()
    raw = [
        (b"content-type", _PROBLEM_JSON),
        (b"content-length", str(len(body)).encode()),
        # The body the client is still sending is not read: the connection cannot be reused.
        (b"connection", b"close"),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class AccessMiddleware:
    """Authenticate, then cap the body, before the application sees the request.

    Args:
        app: the application behind it.
        max_body_bytes: the most bytes a non-streamed body may hold (``GRAFT_MAX_JSON_BYTES``).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if not is_public(method, path):
            try:
                principal = await self._authenticate(scope)
            except ServiceError as exc:
                headers = dict(exc.headers)
                if exc.status == 401:
                    headers["WWW-Authenticate"] = 'Bearer realm="graft"'
                await _problem(send, exc.status, exc.type, exc.message, path=path, headers=headers)
                return
            scope[PRINCIPAL_SCOPE_KEY] = principal
        if method in _NO_BODY_METHODS or _streamed(method, path):
            await self.app(scope, receive, send)
            return
        await self._capped(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Principal:
        context = context_of(scope["app"])
        database = context.database
        configured = context.settings.auth
        # In auto mode, "keys" is final once seen: remember it and skip the look-up.
        if configured == "auto" and context.auth.keys_seen:
            configured = "keys"
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break

        def check() -> Principal:
            with database.transaction(write=False) as session:
                if configured == "auto" and resolve_mode(session, "auto") == "keys":
                    context.auth.keys_seen = True
                return authenticate(session, authorization, mode=configured)

        return await to_thread.run_sync(check)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body up to the cap, then replay it to the application."""
        path = scope["path"]
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await self._too_large(send, path)
                return
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                messages.append(message)
                break
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                await self._too_large(send, path)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, path: str) -> None:
        await _problem(
            send,
            413,
            "too-large",
            f"the request body exceeds GRAFT_MAX_JSON_BYTES ({self.max_body_bytes} bytes)",
            path=path,
        )
