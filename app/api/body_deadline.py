"""A deadline on every request body (SPEC §5.3): the uploads' pace, on every route.

The middleware wraps ``receive``: each wait for the next body chunk is bounded by
:class:`UploadPace` (nothing for the idle timeout, or past the grace period an average under
the floor). When the wait runs out the request is answered 408 ``upload-timeout`` with
``Connection: close``, whatever the route was doing with the body (FastAPI would turn an
error while parsing JSON into a 400; this answer replaces it), authenticated or not. Once
the body is complete, ``receive`` is passed through untouched (it then only waits for a
disconnect, which streaming responses rely on).
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import problem_response
from app.api.uploads import UploadPace
from app.services.errors import UploadTimeoutError

__all__ = ["BodyDeadlineMiddleware"]


class _Expired(UploadTimeoutError):
    """Raised into the route from ``receive``; the middleware answers for it."""


class BodyDeadlineMiddleware:
    """Answer 408 and close the connection when a request body stalls or trickles.

    Args:
        app: the ASGI app.
        pace: the policy (GRAFT_UPLOAD_IDLE_TIMEOUT_SECONDS, GRAFT_UPLOAD_MIN_BYTES_PER_SECOND,
            GRAFT_UPLOAD_RATE_GRACE_SECONDS), the same the uploads apply.
    """

    def __init__(self, app: ASGIApp, *, pace: UploadPace) -> None:
        self.app = app
        self.pace = pace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _TimedBody(receive, self.pace)
        replied = False

        async def guarded_send(message: Message) -> None:
            nonlocal replied
            if body.expired is not None:
                return  # the route's answer to a body that never came: ours replaces it
            replied = True
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception:
            if body.expired is None:
                raise
        if body.expired is not None and not replied:
            error = body.expired
            response = problem_response(
                error.status,
                error.type,
                error.message,
                title=error.problem_title(),
                instance=scope.get("path"),
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)


class _TimedBody:
    """``receive`` with the pace's deadline on each body chunk."""

    def __init__(self, receive: Receive, pace: UploadPace) -> None:
        self._receive = receive
        self._pace = pace
        self._started: float | None = None
        self._received = 0
        self._done = False
        self.expired: UploadTimeoutError | None = None

    async def receive(self) -> Message:
        if self._done:
            return await self._receive()
        if self.expired is not None:
            raise _Expired(self.expired.message)
        if self._started is None:
            self._started = time.monotonic()
        wait = self._pace.wait(time.monotonic() - self._started, self._received)
        try:
            message = await asyncio.wait_for(self._receive(), wait)
        except TimeoutError:
            elapsed = time.monotonic() - self._started
            self.expired = self._pace.refusal(elapsed, self._received, wait)
            raise _Expired(self.expired.message) from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            self._done = not message.get("more_body", False)
        else:
            self._done = True
        return message
