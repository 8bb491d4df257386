"""The HTTP protocol ``graft serve`` runs (``app.api.server``), on a real uvicorn over a real
socket: request bodies reach the app whole and in order, however they are batched, and a
client that hangs up mid-body leaves the app the bytes that arrived, then a disconnect."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.api.server import BODY_BATCH, header_deadline_protocol


class _Recorder:
    """An ASGI app that reads each request's body to its end and answers its length; what it
    received and how the body ended are kept per request, and ``done`` is set after each."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.endings: list[str] = []
        self.done = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        ending = "complete"
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ending = "disconnect"
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.bodies.append(b"".join(chunks))
        self.endings.append(ending)
        body = str(len(self.bodies[-1])).encode()
        # Answered even after a hang-up: that must go nowhere quietly, not raise.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        self.done.set()


@pytest.fixture
def served() -> Iterator[tuple[int, _Recorder]]:
    app = _Recorder()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=header_deadline_protocol(10.0), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.01)
        yield sock.getsockname()[1], app
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _head(port: int, length: int) -> bytes:
    return (
        f"PUT /body HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_large_body_arrives_whole(served: tuple[int, _Recorder]) -> None:
    port, app = served
    body = os.urandom(3 * BODY_BATCH + 12345)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, len(body)))
        for start in range(0, len(body), 70_000):  # odd sizes: batches never line up
            sock.sendall(body[start : start + 70_000])
        answer = http.client.HTTPResponse(sock)  # headers and body may come apart: parse
        answer.begin()
        assert answer.status == 200 and answer.read() == str(len(body)).encode()
    assert app.done.wait(30)
    assert app.bodies == [body] and app.endings == ["complete"]


def test_a_hang_up_mid_body_leaves_the_bytes_that_arrived(served: tuple[int, _Recorder]) -> None:
    port, app = served
    sent = os.urandom(BODY_BATCH // 3)  # under a batch: held for the app when the client goes
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, 4 * len(sent)) + sent)
    assert app.done.wait(30)
    assert app.bodies == [sent] and app.endings == ["disconnect"]
