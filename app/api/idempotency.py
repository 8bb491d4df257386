"""``Idempotency-Key`` on every POST, as ASGI middleware (so routes added later get it too).

The key is scoped to the caller's owner: the principal the access middleware (which runs
first, with the configured ``GRAFT_AUTH`` mode) put in the ASGI scope. A request without one
(a public route) passes straight through. The request body streams to the route while it is
hashed, so uploads are not buffered; the response is captured as it is sent.

Not stored: 5xx; auth failures (401/403: another key of the owner may make the request); a
response marked ``Cache-Control: no-store`` (it holds a secret, such as a new webhook
secret). A stored response is replayed only to a key holding every scope of the key that made
the original request. See :mod:`app.services.idempotency` for the semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.access import PRINCIPAL_SCOPE_KEY
from app.api.app_context import context_of
from app.api.errors import problem_response
from app.db.session import Database
from app.services import idempotency as service
from app.services.auth import Principal
from app.services.errors import ServiceError

__all__ = ["IdempotencyMiddleware"]

logger = logging.getLogger(__name__)

_MAX_STORED_BODY = 1 << 20
_NOT_STORED = {"date", "server"}
# Answers about the key, not the request: the owner's other key may well be allowed.
_AUTH_FAILURES = frozenset({401, 403})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class _Capture:
    """Feeds the fingerprint from the request body and keeps the response as it is sent."""

    def __init__(
        self,
        receive: Receive,
        send: Send,
        print_: service.Fingerprint,
        before_end: Callable[[_Capture], Awaitable[None]],
    ) -> None:
        self._receive, self._send, self.print_ = receive, send, print_
        self.before_end = before_end
        self.body_complete = False
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.chunks: list[bytes] = []
        self.size = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.print_.update(message.get("body", b""))
            if not message.get("more_body", False):
                self.body_complete = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [
                [k.decode("latin-1"), v.decode("latin-1")]
                for k, v in message.get("headers", [])
                if k.decode("latin-1").lower() not in _NOT_STORED
            ]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.size += len(body)
            if self.size <= _MAX_STORED_BODY:
                self.chunks.append(body)
            if not message.get("more_body", False):
                # Recorded before the last byte goes out: a client that retries the moment
                # it has the answer must find it stored, not "in progress".
                await self.before_end(self)
        await self._send(message)

    def storable(self) -> service.StoredResponse | None:
        if self.status is None or self.status >= 500 or self.size > _MAX_STORED_BODY:
            return None
        if not self.body_complete or self.status in _AUTH_FAILURES:
            return None
        if any(k.lower() == "cache-control" and "no-store" in v.lower() for k, v in self.headers):
            return None
        return service.StoredResponse(self.status, self.headers, b"".join(self.chunks))


class IdempotencyMiddleware:
    """Replays, refuses or records POSTs that carry an ``Idempotency-Key``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        context = context_of(scope["app"])
        database = context.database
        if not key.strip() or len(key) > service.MAX_KEY_LENGTH:
            detail = f"Idempotency-Key must be 1 to {service.MAX_KEY_LENGTH} characters"
            await problem_response(400, "bad-request", detail)(scope, receive, send)
            return
        principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
        if principal is None:  # a public route: no owner to keep the key for
            await self.app(scope, receive, send)
            return
        owner, scopes = principal.owner, principal.scopes
        print_ = service.fingerprint(
            scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")
        )
        ttl = context.settings.idempotency_ttl_seconds
        if await to_thread.run_sync(
            lambda: service.begin(database, owner, key, scopes=scopes, ttl_seconds=ttl)
        ):
            await self._first(scope, receive, send, database, owner, key, print_)
        else:
            await self._again(scope, receive, send, database, principal, key, print_)

    async def _first(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        database: Database,
        owner: str,
        key: str,
        print_: service.Fingerprint,
    ) -> None:
        done = False

        async def record(capture: _Capture) -> None:
            nonlocal done
            response = capture.storable()
            digest = print_.hexdigest() if response is not None else None
            await to_thread.run_sync(
                lambda: service.finish(database, owner, key, print_=digest, response=response)
            )
            done = True

        capture = _Capture(receive, send, print_, record)
        if _header(scope, b"content-length") in (None, "0") and not _header(
            scope, b"transfer-encoding"
        ):
            capture.body_complete = True  # nothing to read: the route may never ask
        try:
            await self.app(scope, capture.receive, capture.send)
        finally:
            if not done:  # no complete response (an exception, a client gone): free the key
                await to_thread.run_sync(
                    lambda: service.finish(database, owner, key, print_=None, response=None)
                )

    async def _again(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        database: Database,
        principal: Principal,
        key: str,
        print_: service.Fingerprint,
    ) -> None:
        try:
            stored_print, stored = await to_thread.run_sync(
                service.stored_response, database, principal.owner, key
            )
            service.check_may_replay(stored, principal.scopes, key)
            while True:  # the body decides between a replay and a conflict
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                print_.update(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            service.check_same(stored_print, print_.hexdigest(), key)
        except ServiceError as exc:
            response = problem_response(exc.status, exc.type, exc.message, instance=scope["path"])
            await response(scope, receive, send)
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
        headers.append((b"idempotent-replayed", b"true"))
        await send(
            {"type": "http.response.start", "status": stored.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": stored.body})
