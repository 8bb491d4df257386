"""The HTTP server ``graft serve`` runs: uvicorn on httptools, with a deadline on request
headers and request bodies handed to the app in large messages.

uvicorn times out idle keep-alive connections, but any byte received cancels that timer, so
a client sending one header line every few seconds holds a connection (and a descriptor)
for ever. Here every request's headers must be complete within ``header_timeout`` seconds
of the connection opening, or of the previous response; otherwise the connection is closed.
The body has its own limits (``app.api.uploads``: idle timeout, minimum rate).

Bodies: uvicorn hands the app whatever arrived since its last ``receive`` (often a single
socket read), gathered in a ``bytearray`` and copied out again. An upload then costs a trip
through every middleware's ``receive`` per 64-256 KiB. Here the chunks are kept as they
came (no gathering copy) and the app is woken once :data:`BODY_BATCH` bytes are in, the body
is complete, or :data:`BODY_LINGER` seconds after the first of them, whichever is first: a
1 GB upload is ~1000 messages, not ~16000, and a slow client's bytes wait 2 ms at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["BODY_BATCH", "BODY_LINGER", "header_deadline_protocol", "run"]

logger = logging.getLogger(__name__)

# Bytes gathered before the app is woken, and the most the protocol buffers before it stops
# reading the socket (the client then waits on TCP flow control).
BODY_BATCH = 1 << 20
_BODY_HIGH_WATER = 4 * BODY_BATCH
BODY_LINGER = 0.002


class _Chunks:
    """A request body's pending chunks, in the place uvicorn keeps a ``bytearray``: ``+=``
    appends the chunk itself and ``bytes()`` joins them (a lone chunk is not copied)."""

    __slots__ = ("chunks", "on_taken", "size")

    def __init__(self, first: bytes | bytearray = b"") -> None:
        self.chunks: list[bytes] = [bytes(first)] if first else []
        self.size = len(first)
        self.on_taken: Callable[[], None] | None = None

    def __iadd__(self, chunk: bytes) -> _Chunks:
        self.chunks.append(chunk)
        self.size += len(chunk)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        if self.on_taken is not None:
            self.on_taken()
        return b"".join(self.chunks)


class _HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._headers_in = False
        super().connection_made(transport)
        self._arm()

    # --- the header deadline ---------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._headers_in = False
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if not self._headers_in and not self.transport.is_closing():
            logger.info(
                "closing %s: no complete request headers in %gs", self.client, self.header_timeout
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._headers_in = True
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request's headers are already in
        super().on_response_complete()
        if not pipelined:
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_linger()
        cycle = self.cycle
        pending = cycle.body if cycle is not None and not cycle.response_complete else None
        super().connection_lost(exc)
        if isinstance(pending, _Chunks) and len(pending):
            # Bytes that arrived before the hang-up (a tus part keeps them): the app takes
            # them first, and learns of the disconnect on its next receive.
            cycle.disconnected = False

            def taken() -> None:
                cycle.disconnected = True
                cycle.message_event.set()

            pending.on_taken = taken
            cycle.message_event.set()

    # --- bodies in large messages ------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if not isinstance(cycle.body, _Chunks):  # uvicorn's fresh bytearray after a receive
            cycle.body = _Chunks(cycle.body)  # type: ignore[assignment]
        cycle.body += body
        size = len(cycle.body)
        if size > _BODY_HIGH_WATER:
            self.flow.pause_reading()
        if size >= BODY_BATCH:
            self._wake()
        elif self._linger is None:
            self._linger = self.loop.call_later(BODY_LINGER, self._wake)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        async def app_sending_until_gone(scope: Any, receive: Any, send: Any) -> None:
            async def send_unless_gone(message: Any) -> None:
                # A hang-up whose last bytes the app has not taken yet leaves the cycle
                # "connected" (see connection_lost); an answer then goes nowhere, quietly.
                if cycle.transport.is_closing():
                    cycle.disconnected = True
                await send(message)

            await app(scope, receive, send_unless_gone)

        super()._start_asgi_task(cycle, app_sending_until_gone)

    def on_message_complete(self) -> None:
        self._stop_linger()
        super().on_message_complete()

    def _wake(self) -> None:
        self._stop_linger()
        if self.cycle is not None:
            self.cycle.message_event.set()

    def _stop_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None


def header_deadline_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """An httptools protocol class whose requests must send their headers within
    ``header_timeout``, and whose bodies reach the app in large messages."""
    return type(
        "HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout": header_timeout}
    )


def run(app: Any, *, host: str, port: int, header_timeout: float) -> None:
    """Serve ``app`` until stopped (SIGINT/SIGTERM)."""
    uvicorn.run(
        app, host=host, port=port, log_level="info", http=header_deadline_protocol(header_timeout)
    )
