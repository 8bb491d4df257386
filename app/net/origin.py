"""HTTP to one origin only, for a sandbox child that holds presigned URLs (no credentials).

The store's worker presigns every URL a streamed job's child may use, all on the store's own
endpoint (:class:`app.services.stream_io.StreamSpec` checks that they share one origin); the
child talks to nothing else. Plain ``http.client``, one kept-alive connection per thread, so
a 16 MiB part or a 32 MiB ranged GET costs one ``send``/``recv`` stream and no client
library's per-chunk work. It is here, beside the outbound guard, because it is the one other
way out: its origin is the operator's store, never a user's URL.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["OriginConnections", "Response"]

Response = http.client.HTTPResponse
_ATTEMPTS = 8  # transient errors, 500/502/503/504 (boto3 retries these too)
_BACKOFF = 0.1  # seconds before the first retry, doubled each time
_RETRY_STATUS = frozenset({500, 502, 503, 504})


class OriginConnections:
    """One kept-alive connection per thread to one origin; a request that fails on the
    wire is retried on a new connection, one the server answers 5xx (``SlowDown``) after a
    backoff."""

    def __init__(self, origin: tuple[str, str]) -> None:
        self.origin = origin
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            scheme, netloc = self.origin
            kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = kind(netloc, timeout=120)
        return conn

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | bytearray | None = None,
        expect: Callable[[Response], str | None] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send one request and read the whole answer; ``expect`` may refuse the answer
        from its status and headers first (its one-line reason raised as ``OSError``, the
        body never read: a server that ignored a range would send the whole object)."""
        parts = urlsplit(url)
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        for attempt in range(_ATTEMPTS):
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                if response.status in _RETRY_STATUS and attempt < _ATTEMPTS - 1:
                    response.read()  # S3's SlowDown and friends: back off and try again
                    time.sleep(_BACKOFF * 2**attempt)
                    continue
                refusal = expect(response) if expect is not None else None
                data = response.read() if refusal is None else b""
            except (OSError, http.client.HTTPException):
                self._drop(conn)
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(_BACKOFF * 2**attempt)
                continue
            if refusal is not None:  # never retried; its body is never read
                self._drop(conn)
                raise OSError(refusal)
            return response.status, response.headers, data
        raise AssertionError("unreachable")

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
