"""The Celery executor end to end, on real RabbitMQ, PostgreSQL and S3 (rclone serve s3).

One set of processes serves the whole module (see ``celery_stack``): workers A and B consume
``cpu``. There is no GPU here, so no worker may consume ``gpu``: a job that asks for ``cuda``
waits there for a GPU worker, then fails ``device-unavailable`` (GRAFT_DEVICE_WAIT_SECONDS),
and never runs on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load

from app.db.base import utcnow
from tests.e2e.helpers import net, saved, until
from tests.executors.celery_stack import Stack, celery_stack, unreachable_reason
from tests.parts import require_part
from tests.s3server import S3Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Stack]:
    reason = unreachable_reason()
    if reason:
        require_part("the Celery stack (RabbitMQ, PostgreSQL)", reason)
    with celery_stack(
        tmp_path_factory.mktemp("celery"),
        s3_server,
        GRAFT_DEVICE_WAIT_SECONDS="3",
        GRAFT_MAINTENANCE_SECONDS="1",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.server.client() as client:
        yield client


@pytest.fixture(scope="module")
def checkpoints(client: httpx.Client) -> dict[int, str]:
    """Uploaded sources by seed (seed 100 is the target template)."""
    ids = {}
    for seed in (1, 2, 3, 4, 5, 100):
        r = client.post(f"/v1/checkpoints?filename=s{seed}.pth", content=saved(net(seed)))
        assert r.status_code == 201, r.text
        ids[seed] = r.json()["id"]
    return ids


def _submit(client: httpx.Client, checkpoints: dict[int, str], seed: int, device: str) -> str:
    body = {"source": checkpoints[seed], "target": {"checkpoint": checkpoints[100]},
            "device": device}  # fmt: skip
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _finished(client: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    return until(
        lambda: (j := _job(client, job_id))["status"] in ("succeeded", "failed", "cancelled") and j,
        timeout,
    )


def _running(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return until(
        lambda: (j := _job(client, job_id))["status"] == "running" and j["worker"] and j, 60
    )


def _assert_bit_exact(client: httpx.Client, job_id: str, seed: int) -> None:
    weights = load(client.get(f"/v1/jobs/{job_id}/weights").content)
    expected = net(seed).state_dict()
    assert sorted(weights) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key


def _ran_on(stack: Stack, job_id: str) -> list[int]:
    """Indices of the workers whose log shows they received the job's task."""
    return [i for i, w in enumerate(stack.workers) if job_id in w.log.read_text()]


def test_routing_by_device(stack: Stack, client: httpx.Client, checkpoints: dict[int, str]) -> None:
    cuda = _submit(client, checkpoints, 1, "cuda")
    done = _finished(client, cuda, timeout=30)
    assert (done["status"], done["queue"], done["requested_device"], done["attempts"]) == (
        "failed", "gpu", "cuda", 0,
    ), done  # fmt: skip
    assert done["error"]["type"] == "device-unavailable"
    assert done["device"] is None
    assert _ran_on(stack, cuda) == []  # no CPU worker took it
    # No GPU worker is alive (both recorded only "cpu"): auto goes to `cpu`.
    auto = _submit(client, checkpoints, 2, "auto")
    cpu = _submit(client, checkpoints, 3, "cpu")
    for job_id in (auto, cpu):
        done = _finished(client, job_id)
        assert (done["status"], done["queue"]) == ("succeeded", "cpu")


def test_auto_goes_to_gpu_while_a_gpu_worker_is_alive(
    stack: Stack, client: httpx.Client, checkpoints: dict[int, str]
) -> None:
    from app.db.base import utcnow
    from app.db.models import Worker
    from app.db.repositories import WorkerRepository
    from app.db.session import Database

    # A GPU worker's record, as `graft worker --device cuda:0` on a GPU host writes it.
    database = Database(stack.database_url)
    gpu = Worker(id="gpu-host:1", hostname="gpu-host", pid=1, executor="celery",
                 queues=["gpu"], devices=["cuda:0", "cpu"], started_at=utcnow(),
                 heartbeat_at=utcnow())  # fmt: skip
    with database.transaction() as session:
        WorkerRepository(session).record(gpu)
    try:
        job_id = _submit(client, checkpoints, 4, "auto")
        until(lambda: _job(client, job_id)["queue"] == "gpu", 30)  # sent after the 202
        # That worker is elsewhere: here nobody consumes `gpu`, so the job waits there.
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        done = _finished(client, job_id)
        assert (done["status"], done["queue"], done["attempts"]) == ("cancelled", "gpu", 0)
        assert _ran_on(stack, job_id) == []
    finally:
        with database.transaction() as session:
            WorkerRepository(session).remove(gpu.id)
        database.dispose()


def test_kill_9_of_the_worker_running_a_job(
    stack: Stack, client: httpx.Client, checkpoints: dict[int, str]
) -> None:
    from sqlalchemy import update

    from app.db.models import Job
    from app.db.session import Database

    job_id = _submit(client, checkpoints, 5, "cpu")  # both workers consume `cpu`
    running = _running(client, job_id)
    holder = running["worker"]
    victim = stack.worker_holding(holder)
    killed_at = time.monotonic()
    victim.kill()
    # As if the lease were long (the production default is 30 s): the takeover must not
    # wait for it. (A no-op if the survivor already took over.)
    database = Database(stack.database_url)
    with database.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == holder)
            .values(lease_expires_at=utcnow() + timedelta(seconds=600))
        )
    database.dispose()
    try:
        resumed = until(lambda: _job(client, job_id)["worker"] not in (None, holder), 60)
        took_over = time.monotonic() - killed_at
        done = _finished(client, job_id)
        assert (done["status"], done["attempts"]) == ("succeeded", 2)
        assert done["worker"] not in (None, holder)  # who ran it: the taker
        _assert_bit_exact(client, job_id, 5)
        survivor = stack.workers[1 - stack.workers.index(victim)]
        assert job_id in survivor.log.read_text()
        # Redelivery is immediate, and so is the takeover: no wait for the dead holder's
        # lease (fencing tokens make it safe).
        assert took_over < 5, (took_over, resumed, survivor.log.read_text()[-3000:])
    finally:
        victim.start()


def test_cancel_a_running_job_then_the_next_runs(
    stack: Stack, client: httpx.Client, checkpoints: dict[int, str]
) -> None:
    job_id = _submit(client, checkpoints, 1, "cpu")
    _running(client, job_id)
    asked = time.monotonic()
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    done = _finished(client, job_id, timeout=30)
    assert done["status"] == "cancelled"
    assert time.monotonic() - asked < 5
    assert client.get(f"/v1/jobs/{job_id}/weights").status_code == 404
    following = _submit(client, checkpoints, 2, "cpu")
    done = _finished(client, following)
    assert done["status"] == "succeeded"


def test_s3_round_trip_without_a_shared_disk(stack: Stack, client: httpx.Client) -> None:
    jobs = client.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
    assert jobs
    artifacts = client.get(f"/v1/jobs/{jobs[0]['id']}/artifacts").json()["data"]
    weights = next(a for a in artifacts if a["name"] == "weights")
    assert stack.s3 is not None
    keys = {
        o["Key"]
        for page in stack.s3.client().get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
        for o in page.get("Contents", [])
    }
    sha = weights["sha256"]
    assert f"graft/blobs/{sha[:2]}/{sha[2:]}" in keys, sorted(keys)[:5]
    r = client.get(f"/v1/jobs/{jobs[0]['id']}/weights", headers={"Range": "bytes=0-7"})
    assert r.status_code == 206 and len(r.content) == 8
    # The workers kept nothing: no published blob lives on their disks.
    for worker in stack.workers:
        assert not [p for p in Path(worker.root).rglob("*") if p.name in (sha, sha[2:])]


def test_revoke_terminates_a_running_task(
    stack: Stack, client: httpx.Client, checkpoints: dict[int, str]
) -> None:
    """The cancel's fallback, for a worker that does not honour the flag: the API revokes
    the task with terminate=True. Here the revoke comes first, so nothing cooperative can
    win the race; the flag then lets the recovery sweep record the job as cancelled."""
    from app.config import Settings
    from app.db.base import utcnow
    from app.db.repositories import JobRepository
    from app.db.session import Database
    from app.executors.celery import CeleryDispatcher

    job_id = _submit(client, checkpoints, 3, "cpu")
    owner = _running(client, job_id)["worker"]
    holder = stack.worker_holding(owner)
    dispatcher = CeleryDispatcher(
        Settings(broker_url=stack.workers[0].env["GRAFT_BROKER_URL"], queue_prefix=stack.prefix)
    )
    database = Database(stack.database_url)
    try:
        dispatcher.revoke(job_id)
        until(lambda: f"Terminating {job_id}" in holder.log.read_text(), 10)
        pool = int(owner.split(":")[1])
        until(lambda: not Path(f"/proc/{pool}").exists() or _zombie(pool), 10)
        with database.transaction() as session:
            assert JobRepository(session).request_cancel(job_id, now=utcnow())
        done = _finished(client, job_id, timeout=30)  # the lease lapses, the sweep records it
        assert (done["status"], done["attempts"]) == ("cancelled", 1)
    finally:
        dispatcher.close()
        database.dispose()
    following = _submit(client, checkpoints, 4, "cpu")  # a new pool process takes it
    assert _finished(client, following)["status"] == "succeeded"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
