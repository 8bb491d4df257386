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
from tests.e2e.helpers import assert_consistent, net, saved
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
        GRAFT_ORPHAN_GRACE_SECONDS="0",
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
    time.sleep(0.3)
    assert_consistent(limited.root)


def test_kill_9_of_the_api_mid_upload(tmp_path: Path) -> None:
    server = Server(tmp_path, GRAFT_ORPHAN_GRACE_SECONDS="0")
    server.start()
    with server.client() as client:
        kept = _upload(client, "kept.pth", saved(net(6)))
        job = server.wait(client, _job(client, kept, kept))
        assert job["status"] == "succeeded"
    sock = _stalled_upload(server, 5_000_000, bytes(2_000_000))
    time.sleep(0.5)  # the first 2 MB are staged in tmp/ now
    assert any((tmp_path / "blobs" / "tmp").iterdir())
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    sock.close()
    # A crash between publishing a blob and committing its record leaves such a blob.
    orphan = tmp_path / "blobs" / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"published, never recorded")
    time.sleep(1.5)  # embedded workers notice their parent is gone
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
