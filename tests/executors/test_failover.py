"""Failover with fencing tokens, dead holders seen at once, and jobs that ask for a device.

The local job runner in-process against a migrated SQLite file and a real blob store; the
holders are real runners (threads of this process), the dead ones real exited processes.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import update

from app.db.base import utcnow
from app.db.models import JobEvent, Worker
from app.db.repositories import JobRepository, Lease
from app.db.session import Database
from app.executors import lease as lease_module
from app.executors.lease import Disposition, run_held_job
from app.executors.local import JobRunner
from app.executors.reaper import holder_dead
from app.executors.runtime import JobRuntime
from app.sandbox.runner import Limits
from app.services.jobs.execution import JobSettings, job_device
from app.storage import FileBlobStore
from tests.e2e.helpers import until
from tests.executors.test_local import _get, _job, source_and_target

Setup = tuple[Database, FileBlobStore, str, str]


@pytest.fixture
def setup(sqlite_database: Database, tmp_path: Path) -> Setup:
    return source_and_target(sqlite_database, tmp_path)


def _runtime(
    db: Database,
    store: FileBlobStore,
    *,
    hook: Callable[[str, Callable[[], None]], None] | None = None,
    lease_seconds: float = 60.0,
    device_wait_seconds: float = 300.0,
) -> JobRuntime:
    return JobRuntime(
        db,
        store,
        JobSettings(limits=Limits(), device="auto"),
        lease_seconds=lease_seconds,
        heartbeat_seconds=0.1,
        poll_seconds=0.05,
        stage_hooks=(hook,) if hook else (),
        device_wait_seconds=device_wait_seconds,
    )


def _exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_paused_holder_cannot_publish_over_the_taker(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target)
    paused, resume = threading.Event(), threading.Event()

    def pause_before_publishing(stage: str, _tick: Callable[[], None]) -> None:
        if stage == "publishing":  # converted; about to publish and finish
            paused.set()
            resume.wait(120)

    first = JobRunner(_runtime(db, store, hook=pause_before_publishing))
    # Paused as a whole (think SIGSTOP): its lease heartbeats stop too.
    real = lease_module._heartbeat

    def stalled(runtime: JobRuntime, held: Lease, *rest: Any) -> None:
        if held.owner != first.owner:
            real(runtime, held, *rest)

    monkeypatch.setattr(lease_module, "_heartbeat", stalled)
    first.record()
    with db.transaction() as session:
        held = JobRepository(session).claim(owner=first.owner, now=utcnow(), lease_seconds=60)
    assert held == Lease(job_id, first.owner, 1)
    ended: list[Disposition] = []
    thread = threading.Thread(
        target=lambda: ended.append(run_held_job(first.runtime, held, stop_event=first.stop_event))
    )
    thread.start()
    assert paused.wait(120)
    # Its worker row falls silent past a few beats: the next claimer takes over at once,
    # with 60 s of the paused holder's lease still to run.
    with db.transaction() as session:
        session.execute(
            update(Worker)
            .where(Worker.id == first.owner)
            .values(heartbeat_at=utcnow() - timedelta(seconds=60))
        )
    second = JobRunner(_runtime(db, store))
    assert second.run_once()
    taken = _get(db, job_id)
    assert (taken.status, taken.attempts, taken.lease_token, taken.last_worker) == (
        "succeeded",
        2,
        2,
        second.owner,
    )
    artifacts = sorted((a.name, a.sha256) for a in taken.artifacts)

    resume.set()
    thread.join(120)
    assert ended == [Disposition.lease_lost]  # its finish was refused
    job = _get(db, job_id)
    assert (job.status, job.last_worker, job.lease_token) == ("succeeded", second.owner, 2)
    assert sorted((a.name, a.sha256) for a in job.artifacts) == artifacts
    with db.transaction(write=False) as session:
        terminal = session.query(JobEvent).filter_by(job_id=job_id, terminal=True).count()
    assert terminal == 1


def test_a_dead_holder_on_this_host_is_taken_over_at_once(setup: Setup) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target)
    dead = f"{socket.gethostname()}:{_exited_pid()}:abcdef"
    with db.transaction() as session:
        assert JobRepository(session).claim(owner=dead, now=utcnow(), lease_seconds=600)
    runner = JobRunner(_runtime(db, store))
    assert runner.run_once()  # no wait for the 600 s lease
    job = _get(db, job_id)
    assert (job.status, job.attempts, job.lease_token, job.last_worker) == (
        "succeeded",
        2,
        2,
        runner.owner,
    )


def test_a_live_holder_keeps_its_job(setup: Setup) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target)
    with subprocess.Popen(["sleep", "60"]) as alive:
        owner = f"{socket.gethostname()}:{alive.pid}:abcdef"
        with db.transaction() as session:
            assert JobRepository(session).claim(owner=owner, now=utcnow(), lease_seconds=600)
        assert not JobRunner(_runtime(db, store)).run_once()
        alive.kill()
        alive.wait()
    assert JobRunner(_runtime(db, store)).run_once()
    assert _get(db, job_id).status == "succeeded"


def test_holder_dead_sees_a_zombie_and_other_hosts_by_their_worker_row() -> None:
    with subprocess.Popen(["true"]) as process:
        owner = f"{socket.gethostname()}:{process.pid}:abcdef"
        until(lambda: holder_dead(owner, stale=set()), timeout=30)  # exited, not yet reaped
    assert not holder_dead("elsewhere:1:abcdef", stale=set())
    assert holder_dead("elsewhere:1:abcdef", stale={"elsewhere:1:abcdef"})


def test_a_local_worker_records_itself_and_leaves_on_stop(setup: Setup) -> None:
    db, store, _, _ = setup
    runner = JobRunner(_runtime(db, store))
    thread = threading.Thread(target=runner.run)
    thread.start()

    def recorded() -> Worker | None:
        with db.transaction(write=False) as session:
            return session.get(Worker, runner.owner)

    worker = until(recorded, timeout=30)
    assert (worker.executor, worker.queues, worker.devices) == ("local", ["cpu"], ["cpu"])
    runner.stop_event.set()
    thread.join(30)
    assert recorded() is None


def test_job_device_is_the_one_asked_for() -> None:
    assert [job_device(asked, "auto") for asked in ("auto", "cpu", "cuda")] == [
        "auto",
        "cpu",
        "cuda",
    ]
    assert [job_device(asked, "cuda:1") for asked in ("auto", "cpu", "cuda")] == [
        "cuda:1",
        "cpu",
        "cuda:1",
    ]
    assert job_device("cuda", "cpu") == "cuda"  # fails device-unavailable, never the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_a_cuda_job_waits_for_a_gpu_then_fails_while_a_cpu_job_runs(setup: Setup) -> None:
    db, store, source, target = setup
    cuda = _job(db, source, target, requested_device="cuda")
    cpu = _job(db, source, target, requested_device="cpu")
    runner = JobRunner(_runtime(db, store, device_wait_seconds=3.0))
    assert runner.devices == ("auto", "cpu")
    assert runner.run_once()  # the cpu job, though the cuda job is older
    assert (_get(db, cpu).status, _get(db, cpu).device) == ("succeeded", "cpu")
    assert (_get(db, cuda).status, _get(db, cuda).attempts) == ("queued", 0)

    def failed() -> bool:
        assert not runner.run_once()  # never claimed here
        return _get(db, cuda).status == "failed"

    until(failed, timeout=60)
    job = _get(db, cuda)
    assert (job.error_type, job.attempts, job.device) == ("device-unavailable", 0, None)
    assert job.error_message == (
        "the job asked for device cuda, and no GPU worker took it in time "
        "(GRAFT_DEVICE_WAIT_SECONDS); start a worker with CUDA, or submit it with device cpu "
        "or auto"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_a_cuda_job_held_without_cuda_fails_rather_than_runs_on_the_cpu(setup: Setup) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target, requested_device="cuda")
    runtime = _runtime(db, store)
    with db.transaction() as session:  # as if a misrouted message brought it here
        held = JobRepository(session).claim(owner="w", now=utcnow(), lease_seconds=60)
    assert held is not None
    assert run_held_job(runtime, held, stop_event=threading.Event()) is Disposition.finished
    job = _get(db, job_id)
    assert (job.status, job.error_type) == ("failed", "device-unavailable")
    assert [a.name for a in job.artifacts if a.name == "weights"] == []
