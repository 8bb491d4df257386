"""Processes die; jobs do not get lost or done twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load

from tests.e2e.conftest import REPO, Server
from tests.e2e.helpers import assert_consistent, net, saved, until

pytestmark = pytest.mark.e2e


def _upload(client: httpx.Client, name: str, payload: bytes) -> str:
    r = client.post(f"/v1/checkpoints?filename={name}", content=payload)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _job(client: httpx.Client, source: str, target: str) -> str:
    r = client.post("/v1/jobs", json={"source": source, "target": {"checkpoint": target}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _assert_converted(client: httpx.Client, job_id: str, seed: int) -> None:
    weights = load(client.get(f"/v1/jobs/{job_id}/weights").content)
    for key, value in net(seed).state_dict().items():
        assert torch.equal(weights[key], value), key
    artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert sorted(a["name"] for a in artifacts["data"]) == [
        "attestation",
        "manifest",
        "report",
        "report-text",
        "weights",
    ]


def test_kill_9_of_a_worker_mid_job(tmp_path: Path) -> None:
    # A 600 s lease: the job comes back because its holder's process is gone, not because
    # the lease lapsed.
    server = Server(
        tmp_path, GRAFT_WORKERS="1", GRAFT_TEST_STAGE_DELAY="1.5", GRAFT_LEASE_SECONDS="600"
    )
    server.start()
    try:
        with server.client() as client:
            source = _upload(client, "s.pth", saved(net(7)))
            target = _upload(client, "t.pth", saved(net(8)))
            job_id = _job(client, source, target)
            running = until(
                lambda: (
                    (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "running"
                    and j["worker"]
                    and j
                )
            )
            pid = int(running["worker"].split(":")[1])
            os.kill(pid, signal.SIGKILL)
            # The pool replaces the worker, which sees the holder's process gone and takes
            # the job over at once (a tenth of the lease is a generous bound here).
            done = server.wait(client, job_id, timeout=60)
            assert (done["status"], done["attempts"]) == ("succeeded", 2)
            assert done["worker"] not in (None, running["worker"])  # who ran it: the taker
            _assert_converted(client, job_id, seed=7)
            assert "restarting" in server.log.read_text()
        assert_consistent(tmp_path)
    finally:
        server.stop()


def test_job_that_keeps_killing_workers_fails_after_bounded_attempts(tmp_path: Path) -> None:
    server = Server(tmp_path, GRAFT_WORKERS="1", GRAFT_TEST_STAGE_DELAY="3", GRAFT_MAX_ATTEMPTS="2")
    server.start()
    try:
        with server.client() as client:
            source = _upload(client, "s.pth", saved(net(7)))
            job_id = _job(client, source, source)
            seen: set[str] = set()
            for _ in range(2):
                job = until(
                    lambda: (
                        (j := client.get(f"/v1/jobs/{job_id}").json())["worker"]
                        and j["worker"] not in seen
                        and j
                    ),
                    timeout=60,
                )
                seen.add(job["worker"])
                os.kill(int(job["worker"].split(":")[1]), signal.SIGKILL)
            done = server.wait(client, job_id, timeout=60)
            assert (done["status"], done["error"]["type"], done["attempts"]) == (
                "failed",
                "worker-lost",
                2,
            )
    finally:
        server.stop()


def test_restart_loses_no_job(tmp_path: Path) -> None:
    # One worker and a slow stage: at shutdown one job is running (its worker is told to stop
    # and gives it back to the queue) and two are still queued.
    server = Server(tmp_path, GRAFT_WORKERS="1", GRAFT_TEST_STAGE_DELAY="1")
    server.start()
    with server.client() as client:
        source = _upload(client, "s.pth", saved(net(11)))
        target = _upload(client, "t.pth", saved(net(12)))
        jobs = [_job(client, source, target) for _ in range(3)]
        until(lambda: client.get(f"/v1/jobs/{jobs[0]}").json()["status"] == "running")
        assert [client.get(f"/v1/jobs/{j}").json()["status"] for j in jobs[1:]] == ["queued"] * 2
    server.stop()
    server.start(GRAFT_WORKERS="2", GRAFT_TEST_STAGE_DELAY="0")
    try:
        with server.client() as client:
            for job_id in jobs:
                done = server.wait(client, job_id, timeout=60)
                # attempts == 1: a job running at shutdown was released, not abandoned.
                assert (done["status"], done["attempts"]) == ("succeeded", 1)
                _assert_converted(client, job_id, seed=11)
        assert "released back to the queue" in server.log.read_text()
    finally:
        server.stop()


def test_graft_worker_adds_a_worker(tmp_path: Path) -> None:
    server = Server(tmp_path, GRAFT_WORKERS="0")
    server.start()
    try:
        with server.client() as client:
            source = _upload(client, "s.pth", saved(net(21)))
            job_id = _job(client, source, source)
            # GRAFT_WORKERS=0: no process exists that could claim it until the one below.
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
            worker = subprocess.Popen(
                [sys.executable, "-c", "from app.cli import main; main()", "worker"],
                cwd=REPO,
                env=server.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                done = server.wait(client, job_id, timeout=60)
                assert (done["status"], done["device"]) == ("succeeded", "cpu")
                _assert_converted(client, job_id, seed=21)
            finally:
                worker.terminate()
                assert worker.wait(15) == 0
    finally:
        server.stop()
