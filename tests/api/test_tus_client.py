"""An off-the-shelf tus client (tuspy) against a real ``graft serve`` (uvicorn), unchanged:
an upload stopped half-way, then cut mid-part by a dropped connection, is resumed from the
client's own URL store, and makes the same record as a plain upload of the same file."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch

from app.client import GraftClient, GraftClientError, TusOptions
from tests.e2e.conftest import Server
from tests.parts import import_part

tusclient = import_part("tusclient", "tuspy", "the `dev` extra: pip install -e .[dev]")
from tusclient.client import TusClient  # noqa: E402
from tusclient.storage.filestorage import FileStorage  # noqa: E402
from tusclient.uploader import Uploader  # noqa: E402

CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("tus"), GRAFT_WORKERS="0", GRAFT_UPLOAD_IDLE_TIMEOUT_SECONDS="1"
    )
    srv.start()
    yield srv
    srv.stop()


def checkpoint_file(path: Path, seed: int = 7) -> bytes:
    """A real torch checkpoint of a few MB (several tus parts)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        "encoder.weight": torch.randn(512, 1024, generator=generator),
        "encoder.bias": torch.randn(512, generator=generator),
        "head.weight": torch.randn(10, 512, generator=generator).to(torch.float16),
    }
    torch.save(state, path)
    return path.read_bytes()


def drop_mid_part(url: str, offset: int, part: bytes) -> None:
    """Send a PATCH announcing ``part`` whole, send half of it, and hang up."""
    where = urlsplit(url)
    head = (
        f"PATCH {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(part)}\r\n\r\n"
    ).encode()
    with socket.create_connection((where.hostname, where.port)) as sock:
        sock.sendall(head + part[: len(part) // 2])


# tuspy opens the file for each request and never closes it (its own leak, not the server's).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tuspy_resumes_a_cut_upload(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    data = checkpoint_file(path)
    client = TusClient(f"{server.url}/v1/uploads")
    storage = FileStorage(str(tmp_path / "tus-urls.json"))

    def uploader() -> Uploader:
        return client.uploader(
            str(path), chunk_size=CHUNK, store_url=True, url_storage=storage,
            metadata={"filename": "model.pt"},
        )  # fmt: skip

    try:
        resume(server, data, uploader)
    finally:
        storage._db.close()


def resume(server: Server, data: bytes, uploader: Callable[[], Uploader]) -> None:
    first = uploader()
    first.upload(stop_at=len(data) // 2)  # the user stops it half-way
    url = str(first.url)
    stopped_at = first.offset
    assert 0 < stopped_at < len(data)
    # Then a connection drops in the middle of a part: what arrived is kept.
    drop_mid_part(url, stopped_at, data[stopped_at : stopped_at + CHUNK])
    with server.client() as http:
        for _ in range(200):  # the server notices the hang-up when the body ends early
            offset = int(
                http.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"]
            )
            if offset > stopped_at:
                break
            time.sleep(0.05)
        assert stopped_at < offset < stopped_at + CHUNK

        # A new client finds the URL by the file's fingerprint and resumes at the offset.
        second = uploader()
        assert second.url == url and second.offset == offset
        second.upload()
        status = http.get(url).json()
        assert status["complete"] and status["created"]
        record = status["checkpoint"]
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["size"] == len(data) and record["filename"] == "model.pt"

        plain = http.post("/v1/checkpoints?filename=model.pt", content=data)
        assert plain.status_code == 200, plain.text  # the same bytes: the same record
        assert plain.json() == record
        tensors = http.get(f"/v1/checkpoints/{record['id']}/tensors").json()["data"]
        assert [(t["key"], t["shape"], t["dtype"]) for t in tensors] == [
            ("encoder.weight", [512, 1024], "float32"),
            ("encoder.bias", [512], "float32"),
            ("head.weight", [10, 512], "float16"),
        ]
        # The stored blob is the file itself.
        blob = server.root / "blobs" / "sha256" / record["sha256"][:2] / record["sha256"]
        assert blob.read_bytes() == data


def test_a_stalled_part_gets_408_and_keeps_what_arrived(server: Server) -> None:
    with server.client() as http:
        r = http.post("/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000"})
        url = r.headers["Location"]
        where = urlsplit(url)
        head = (
            f"PATCH {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            "Content-Length: 1000\r\n\r\n"
        ).encode()
        with socket.create_connection((where.hostname, where.port)) as sock:
            sock.sendall(head + b"x" * 300)  # then nothing: the body deadline answers
            sock.settimeout(30)
            # The server closes after its answer: read it all (headers and body may come
            # in separate segments).
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            answer = b"".join(chunks).decode("latin-1")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "upload-timeout" in answer
        offset = http.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"]
        assert offset == "300"


# -- graft submit's client ------------------------------------------------------------------


class _CutBody(httpx.SyncByteStream):
    """A request body that stops half-way with a dropped connection."""

    def __init__(self, inner: Iterable[bytes], keep: int) -> None:
        self.inner = inner
        self.keep = keep

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.keep:
                yield chunk[: self.keep - sent]
                raise httpx.WriteError("connection dropped (test)")
            sent += len(chunk)
            yield chunk


class CuttingTransport(httpx.BaseTransport):
    """Real HTTP, but the PATCHes numbered in ``cut`` (from 0) drop half-way through."""

    def __init__(self, cut: Callable[[int], bool]) -> None:
        self.inner = httpx.HTTPTransport()
        self.cut = cut
        self.patches: list[int] = []  # each PATCH's Upload-Offset

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            number = len(self.patches)
            self.patches.append(int(request.headers["Upload-Offset"]))
            if self.cut(number):
                body = request.stream
                assert isinstance(body, Iterable)
                keep = int(request.headers["Content-Length"]) // 2
                request.stream = _CutBody(body, keep)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_the_client_resumes_after_dropped_connections(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    data = checkpoint_file(path, seed=11)
    options = TusOptions(threshold=1024**2, part_size=CHUNK, state_dir=tmp_path / "state")
    transport = CuttingTransport(cut=lambda n: n in (1, 4))
    with GraftClient(server.url, transport=transport, tus=options) as graft:
        record = graft.upload(path)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size"] == len(data) and record["filename"] == "big.pt"
    offsets = transport.patches
    # Parts went in order, and each cut part resumed past the bytes that had arrived (kept
    # by the server), never from zero.
    assert offsets[0] == 0 and offsets == sorted(offsets)
    for cut in (1, 4):
        resumed = next(o for o in offsets[cut + 1 :] if o != offsets[cut])
        assert offsets[cut] < resumed < offsets[cut] + CHUNK
    assert list(options.state_dir.iterdir()) == []  # done: nothing left to resume
    with server.client() as http:
        assert http.get(f"/v1/checkpoints/{record['id']}").json() == record


def test_the_next_run_resumes_an_upload_the_last_one_gave_up(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "big.pt"
    data = checkpoint_file(path, seed=12)
    options = TusOptions(
        threshold=1024**2, part_size=CHUNK, state_dir=tmp_path / "state", checksum=True
    )
    broken = CuttingTransport(cut=lambda n: n >= 3)  # the network goes away after 3 parts
    with (
        GraftClient(server.url, transport=broken, tus=options, retries=1) as graft,
        pytest.raises(GraftClientError, match="run again to resume"),
    ):
        graft.upload(path)
    assert len(list(options.state_dir.iterdir())) == 1
    healthy = CuttingTransport(cut=lambda n: False)
    with GraftClient(server.url, transport=healthy, tus=options) as graft:
        record = graft.upload(path)
    # Not from zero; with checksums, a cut part is dropped whole, so parts stay aligned.
    assert healthy.patches[0] == 3 * CHUNK
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert list(options.state_dir.iterdir()) == []
