"""The HTTP server ``graft serve`` runs: uvicorn, with a deadline on request headers.

uvicorn times out idle keep-alive connections, but any byte received cancels that timer, so
a client sending one header line every few seconds holds a connection (and a descriptor)
for ever. Here every request's headers must be complete within ``header_timeout`` seconds
of the connection opening, or of the previous response; otherwise the connection is closed.
The body has its own limits (``app.api.uploads``: idle timeout, minimum rate).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["header_deadline_protocol", "run"]

logger = logging.getLogger(__name__)


class _HeaderDeadlineProtocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info(
                "closing %s: no complete request headers in %gs", self.client, self.header_timeout
            )
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request on this connection gets the same deadline
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(header_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class whose requests must send their headers within ``header_timeout``."""
    return type(
        "HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout": header_timeout}
    )


def run(app: Any, *, host: str, port: int, header_timeout: float) -> None:
    """Serve ``app`` until stopped (SIGINT/SIGTERM)."""
    uvicorn.run(
        app, host=host, port=port, log_level="info", http=header_deadline_protocol(header_timeout)
    )
