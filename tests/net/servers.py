"""A tiny real HTTP(S) server for outbound tests: counts connections, records requests."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Server:
    """What a test sees: the port, the requests' headers, connections accepted, files served."""

    httpd: _CountingServer
    headers: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return self.httpd.connections

    @property
    def hosts(self) -> list[str]:
        return [h["Host"] for h in self.headers]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible
    server: _CountingServer

    def do_GET(self) -> None:
        state = self.server.state
        state.headers.append(dict(self.headers.items()))
        if self.path.startswith("/redirect?to="):
            self._answer(302, b"", {"Location": self.path.removeprefix("/redirect?to=")})
        elif self.path.startswith("/status/"):
            self._answer(int(self.path.removeprefix("/status/")), b"nope")
        elif self.path.startswith("/chunked/"):
            # No Content-Length: the cap must hold on the bytes received.
            body = state.files[self.path.removeprefix("/chunked/")]
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        elif self.path.startswith("/files/"):
            body = state.files.get(self.path.removeprefix("/files/"))
            self._answer(200 if body is not None else 404, body or b"")
        else:
            self._answer(200, b"ok")

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: Server | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.state = state or Server(self)

    def verify_request(self, request: object, client_address: object) -> bool:
        self.connections += 1
        return True


@contextmanager
def serve(context: ssl.SSLContext | None = None) -> Iterator[Server]:
    """Run a server on 127.0.0.1 (TLS with ``context``) for the block."""
    httpd = _CountingServer()
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
