"""Hostile clients and faults against a real ``graft serve`` (uvicorn + worker processes).

Every case ends with the same audit (:func:`assert_consistent`): every record's blob exists,
every blob has a record, no temp file is left, and no job is running past its lease.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load
from torch import nn

from tests.e2e.conftest import Server
from tests.e2e.helpers import assert_consistent, children, gone, net, saved, settled, until
from tests.schemas import assert_valid

pytestmark = pytest.mark.e2e

FILE_LIMIT = 200_000  # RLIMIT_FSIZE of the conversion sandbox in this module


def _upload(client: httpx.Client, name: str, payload: bytes) -> str:
    r = client.post(f"/v1/checkpoints?filename={name}", content=payload)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _job(client: httpx.Client, source: str, target: str) -> str:
    r = client.post("/v1/jobs", json={"source": source, "target": {"checkpoint": target}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _big(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10))  # ~270 kB of float32


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("limited"),
        GRAFT_SANDBOX_FILE_BYTES=str(FILE_LIMIT),
        GRAFT_SANDBOX_ADDRESS_SPACE_BYTES=str(4 * 1024**3),
        GRAFT_UPLOAD_IDLE_TIMEOUT_SECONDS="1",
        GRAFT_UPLOAD_RATE_GRACE_SECONDS="2",
        GRAFT_ORPHAN_GRACE_SECONDS="0",
        # 20 stalled uploads of one owner below: each must reach its idle timeout, none 429.
        GRAFT_MAX_UPLOADS_PER_OWNER="32",
    )
    srv.start()
    yield srv
    srv.stop()


def test_disk_full_fails_that_job_only(limited: Server) -> None:
    with limited.client() as client:
        big_src = _upload(client, "big-src.pth", saved(_big(1)))
        big_tgt = _upload(client, "big-tgt.pth", saved(_big(2)))
        small_src = _upload(client, "s.pth", saved(net(3)))
        small_tgt = _upload(client, "t.pth", saved(net(4)))
        big = _job(client, big_src, big_tgt)
        small = _job(client, small_src, small_tgt)
        failed = limited.wait(client, big)
        done = limited.wait(client, small)
        assert (failed["status"], failed["error"]["type"]) == ("failed", "disk-full")
        assert "the file-size limit" in failed["error"]["message"]
        assert client.get(f"/v1/jobs/{big}/artifacts").json()["count"] == 0
        assert done["status"] == "succeeded"
        weights = load(client.get(f"/v1/jobs/{small}/weights").content)
        for key, value in net(3).state_dict().items():
            assert torch.equal(weights[key], value), key
    assert_consistent(limited.root)


def test_nan_and_inf_convert_with_a_warning(limited: Server) -> None:
    state = {"w": torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])}
    buf = io.BytesIO()
    torch.save(state, buf)
    with limited.client() as client:
        source = _upload(client, "nan.pt", buf.getvalue())
        job = limited.wait(client, _job(client, source, source))
        assert job["status"] == "succeeded"
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
        assert_valid("report", report)  # served by another process: checked here
        assert "nan_or_inf: w" in report["warnings"]
        weights = load(client.get(f"/v1/jobs/{job['id']}/weights").content)
        assert torch.equal(weights["w"].isnan(), state["w"].isnan())
        assert torch.equal(weights["w"][1:], state["w"][1:])
    assert_consistent(limited.root)


def _stalled_upload(server: Server, declared: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/checkpoints?filename=slow.pt HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/octet-stream\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + sent
    )
    return sock


def test_slow_uploads_time_out_and_do_not_block_others(limited: Server) -> None:
    sockets = [_stalled_upload(limited, 10_000, b"PK\x03\x04" + bytes(100)) for _ in range(20)]
    try:
        start = time.monotonic()
        with limited.client() as client:  # 20 stalled uploads: the API still answers at once
            assert client.get("/v1/jobs").status_code == 200
            assert time.monotonic() - start < 1.0
            source = _upload(client, "quick.pth", saved(net(5)))
            assert client.get(f"/v1/checkpoints/{source}").status_code == 200
        for sock in sockets:
            sock.settimeout(10)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"type":"upload-timeout"' in answer
    finally:
        for sock in sockets:
            sock.close()
    settled(lambda: assert_consistent(limited.root))


@pytest.mark.parametrize("path", ["/v1/hooks/mlflow", "/v1/jobs"])
def test_a_trickled_body_gets_408_and_a_closed_connection(limited: Server, path: str) -> None:
    # Issue 23: Content-Length 100000, then one byte at a time, never idle for the 1 s idle
    # timeout; anonymous (the hook) or not (a job). Past the 2 s grace the average is far
    # under GRAFT_UPLOAD_MIN_BYTES_PER_SECOND: 408, and the server closes the connection.
    sock = socket.create_connection(("127.0.0.1", limited.port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + b"Content-Length: 100000\r\n\r\n{"
    )
    started = time.monotonic()
    sock.settimeout(0.4)
    answer = b""
    try:
        while time.monotonic() - started < 30:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not answer:
                    sock.sendall(b" ")  # one byte every 0.4 s, until the server answers
                continue
            except ConnectionResetError:
                chunk = b""  # our last byte crossed the server's close
            if not chunk:
                break  # closed by the server
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert b'"type":"upload-timeout"' in answer
        assert b"connection: close" in answer.lower()
        assert time.monotonic() - started < 20  # the attack was still open after 21 s
    finally:
        sock.close()


def test_kill_9_of_the_api_mid_upload(tmp_path: Path) -> None:
    server = Server(tmp_path, GRAFT_ORPHAN_GRACE_SECONDS="0")
    server.start()
    with server.client() as client:
        kept = _upload(client, "kept.pth", saved(net(6)))
        job = server.wait(client, _job(client, kept, kept))
        assert job["status"] == "succeeded"
    sock = _stalled_upload(server, 5_000_000, bytes(2_000_000))
    until(lambda: any((tmp_path / "blobs" / "tmp").iterdir()))  # the first 2 MB are staged
    assert any((tmp_path / "blobs" / "tmp").iterdir())
    assert server.process is not None
    workers = children(server.process.pid)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    sock.close()
    # A crash between publishing a blob and committing its record leaves such a blob.
    orphan = tmp_path / "blobs" / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"published, never recorded")
    until(lambda: gone(workers), timeout=60)  # embedded workers notice their parent is gone
    server.start()
    try:
        assert not orphan.exists()
        with server.client() as client:
            assert client.get(f"/v1/checkpoints/{kept}").status_code == 200
            assert client.get("/v1/checkpoints").json()["count"] == 1
            weights = load(client.get(f"/v1/jobs/{job['id']}/weights").content)
            for key, value in net(6).state_dict().items():
                assert torch.equal(weights[key], value), key
        assert_consistent(tmp_path)
    finally:
        server.stop()


# --- issue 12: an attack on the running service ----------------------------------------------


def _token(root: Path, owner: str = "attacker") -> tuple[str, dict[str, str]]:
    from app.db.session import Database
    from app.services.auth import create_key

    database = Database(f"sqlite:///{root / 'graft.db'}")
    with database.transaction() as session:
        key, token = create_key(session, owner=owner, scopes=["write"])
        key_id = key.id
    database.dispose()
    return key_id, {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """Keys mode, no workers (the API's own timer reaps leases), tight client deadlines."""
    srv = Server(
        tmp_path_factory.mktemp("strict"),
        GRAFT_AUTH="keys",
        GRAFT_WORKERS="0",
        GRAFT_HEADER_TIMEOUT_SECONDS="1",
        GRAFT_UPLOAD_RATE_GRACE_SECONDS="2",
        GRAFT_UPLOAD_MIN_BYTES_PER_SECOND="1000",
        GRAFT_MAX_UPLOADS_PER_OWNER="2",
        GRAFT_MAINTENANCE_SECONDS="0.2",
        GRAFT_BLOB_CLAIM_SECONDS="1",
    )
    srv.start()
    _, headers = _token(srv.root)
    yield srv, headers
    srv.stop()


def _raw(server: Server, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(head)
    return sock


def _answer(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except TimeoutError:
        pass
    return answer


def test_an_anonymous_31_mb_body_is_refused_before_it_is_sent(strict) -> None:  # type: ignore[no-untyped-def]
    server, _ = strict
    sock = _raw(
        server,
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 31000000\r\n\r\n[" + b"0," * 512,
    )
    try:
        start = time.monotonic()
        answer = _answer(sock, 5)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b'"type":"unauthorized"' in answer
        assert time.monotonic() - start < 2  # before: waited for 31 MB that never came
    finally:
        sock.close()


def test_headers_sent_one_line_at_a_time_are_cut_off(strict) -> None:  # type: ignore[no-untyped-def]
    server, _ = strict
    sock = _raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    try:
        closed = False
        for i in range(10):  # a header line every 0.4 s: 4 s if nobody stops it
            time.sleep(0.4)
            try:
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
            except OSError:
                closed = True
                break
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed, "the connection outlived its header deadline"
        assert time.monotonic() - start < 2.5
    finally:
        sock.close()
    with server.client() as client:  # the server itself is fine
        assert client.get("/healthz").status_code == 200


def _assert_empty(folder: Path) -> None:
    assert list(folder.iterdir()) == []


def _upload_head(headers: dict[str, str], length: int) -> bytes:
    auth = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        b"POST /v1/checkpoints?filename=slow.pt HTTP/1.1\r\nHost: x\r\n"
        + auth.encode()
        + f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n".encode()
    )


def test_a_trickling_upload_gets_408_once_the_grace_is_over(strict) -> None:  # type: ignore[no-untyped-def]
    server, headers = strict
    sock = _raw(server, _upload_head(headers, 10_000) + b"PK")
    start = time.monotonic()
    try:
        answer = b""
        sock.settimeout(0.3)
        while time.monotonic() - start < 8 and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(b"\x00")  # one byte every 0.3 s: far under 1000 B/s
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        answer += _answer(sock, 1)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert b'"type":"upload-timeout"' in answer
        assert b"GRAFT_UPLOAD_MIN_BYTES_PER_SECOND" in answer
        assert time.monotonic() - start < 5
    finally:
        sock.close()
    settled(lambda: _assert_empty(server.root / "blobs" / "tmp"))


def test_concurrent_uploads_over_the_owner_cap_get_429(strict) -> None:  # type: ignore[no-untyped-def]
    server, headers = strict
    stalled = [_raw(server, _upload_head(headers, 10_000) + b"PK") for _ in range(2)]
    try:
        # Both are being received now: each has a staged file.
        until(lambda: len(list((server.root / "blobs" / "tmp").iterdir())) == 2)
        with server.client() as client:
            r = client.post(
                "/v1/checkpoints?filename=third.pth", content=saved(net(7)), headers=headers
            )
            assert r.status_code == 429, r.text
            assert r.json()["type"] == "too-many-uploads"
            assert r.headers["retry-after"] == "5"
            # Another owner has slots of its own.
            _, other = _token(server.root, "bystander")
            r = client.post("/v1/checkpoints?filename=b.pth", content=saved(net(8)), headers=other)
            assert r.status_code == 201, r.text
        for sock in stalled:  # each is refused once its rate falls under the floor
            assert _answer(sock, 6).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in stalled:
            sock.close()
    settled(lambda: _assert_empty(server.root / "blobs" / "tmp"))
    with server.client() as client:  # the slots were given back
        r = client.post(
            "/v1/checkpoints?filename=again.pth", content=saved(net(7)), headers=headers
        )
        assert r.status_code == 201, r.text


def test_a_long_file_name_does_not_break_the_connection(strict) -> None:  # type: ignore[no-untyped-def]
    import http.client
    from urllib.parse import quote

    server, headers = strict
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "POST",
            f"/v1/checkpoints?filename={quote('é' * 200)}",
            body=saved(net(1)),
            headers=headers,
        )
        r = conn.getresponse()
        body = r.read()
        assert r.status == 400, body
        assert b"bytes in UTF-8; at most 255" in body
        conn.request("GET", "/v1/checkpoints", headers=headers)  # the same connection, or a
        r = conn.getresponse()  # fresh one if the server said `Connection: close`; never a reset
        assert r.status == 200
        r.read()
    finally:
        conn.close()


def test_expired_leases_are_reaped_with_no_worker_running(strict) -> None:  # type: ignore[no-untyped-def]
    import sqlite3
    from datetime import UTC, datetime, timedelta

    server, headers = strict
    with server.client() as client:
        source = client.post(
            "/v1/checkpoints?filename=r.pth", content=saved(net(2)), headers=headers
        )
        assert source.status_code in (200, 201), source.text
        body = {"source": source.json()["id"], "target": {"checkpoint": source.json()["id"]}}
        retry, lost = (
            client.post("/v1/jobs", json=body, headers=headers).json()["id"] for _ in range(2)
        )
        lapsed = (datetime.now(UTC) - timedelta(seconds=5)).replace(tzinfo=None).isoformat(sep=" ")
        with sqlite3.connect(
            server.root / "graft.db"
        ) as db:  # as a worker killed mid-job leaves them
            db.execute(
                "update jobs set status='running', lease_owner='dead', lease_expires_at=?, "
                "attempts=case when id=? then 1 else max_attempts end where id in (?, ?)",
                (lapsed, retry, retry, lost),
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = {j: client.get(f"/v1/jobs/{j}", headers=headers).json() for j in (retry, lost)}
            if states[retry]["status"] != "running" and states[lost]["status"] != "running":
                break
            time.sleep(0.1)
        assert states[retry]["status"] == "queued"
        assert (states[lost]["status"], states[lost]["error"]["type"]) == ("failed", "worker-lost")
        assert time.monotonic() - deadline < 0  # settled by the timer, within seconds
        for job in (retry, lost):
            client.post(f"/v1/jobs/{job}/cancel", headers=headers)


def test_delete_frees_disk_while_the_server_runs(strict) -> None:  # type: ignore[no-untyped-def]
    server, headers = strict
    with server.client() as client:
        r = client.post("/v1/checkpoints?filename=d.pth", content=saved(net(11)), headers=headers)
        assert r.status_code == 201, r.text
        blob = server.root / "blobs" / "sha256" / r.json()["sha256"][:2] / r.json()["sha256"]
        assert blob.is_file()
        assert (
            client.delete(f"/v1/checkpoints/{r.json()['id']}", headers=headers).status_code == 204
        )
        # Younger than GRAFT_BLOB_CLAIM_SECONDS (1 s) when deleted: collected by the timer.
        deadline = time.monotonic() + 5
        while blob.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not blob.exists()


def test_revoking_every_key_never_opens_a_public_server(tmp_path: Path) -> None:
    server = Server(tmp_path, host="0.0.0.0", GRAFT_WORKERS="0")
    server.start()  # no key yet: it listens on loopback only, whatever --host says
    server.stop()
    assert "listens on 127.0.0.1 only (not 0.0.0.0)" in server.log.read_text()
    key_id, headers = _token(tmp_path)
    server.start()
    try:
        with server.client() as client:
            assert client.get("/v1/jobs", headers=headers).status_code == 200
            from app.db.session import Database
            from app.services.auth import revoke_key

            database = Database(f"sqlite:///{tmp_path / 'graft.db'}")
            with database.transaction() as session:
                assert revoke_key(session, key_id)
            database.dispose()
            for attempt in ({}, headers, {"Authorization": "Bearer garbage"}):
                r = client.get("/v1/jobs", headers=attempt)
                assert r.status_code == 401, r.text  # before: 200 as owner `local`
            assert client.get("/v1/auth").json()["mode"] == "keys"
    finally:
        server.stop()
