"""Routing by device, the workers' records, and the claim of one named job, on real
Alembic-migrated SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import inspect

from alembic import command
from app.db.base import utcnow
from app.db.migrate import alembic_config
from app.db.models import Checkpoint, CheckpointFile, Job, Worker
from app.db.repositories import CheckpointRepository, JobRepository, WorkerRepository
from app.db.session import Database
from app.services.jobs.dispatch import (
    dispatch_job,
    redispatch_unsent,
    revoke_if_still_running,
    route,
)


class RecordingDispatcher:
    """Stands in for the broker (a process boundary): records what was sent."""

    def __init__(self, *, fail: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.revoked: list[str] = []
        self.fail = fail

    def send(self, job_id: str, queue: str) -> None:
        if self.fail:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        self.sent.append((job_id, queue))

    def revoke(self, job_id: str) -> None:
        self.revoked.append(job_id)


def _job(db: Database, *, device: str = "auto", max_attempts: int = 3) -> str:
    with db.transaction() as session:
        checkpoint = Checkpoint(
            sha256="c" * 64, filename="x.pth", size=1, format="torch-zip", entry=None,
            stripped_prefix=None, tensors=0, elements=0, bytes=0, by_dtype={}, ignored=[],
            files=[CheckpointFile(position=0, filename="x.pth", sha256="c" * 64, size=1)],
        )  # fmt: skip
        repo = CheckpointRepository(session)
        source = repo.get_by_sha256("c" * 64, owner="local") or repo.add(checkpoint, [])
        job = Job(source_id=source.id, target={"checkpoint": source.id},
                  target_checkpoint_id=source.id, requested_device=device)  # fmt: skip
        job.max_attempts = max_attempts
        return JobRepository(session).add(job).id


def _worker(worker_id: str, queues: list[str], devices: list[str], age: float = 0) -> Worker:
    at = utcnow() - timedelta(seconds=age)
    return Worker(id=worker_id, hostname="h", pid=1, executor="celery", queues=queues,
                  devices=devices, started_at=at, heartbeat_at=at)  # fmt: skip


def test_route_by_device_and_live_gpu_workers(any_database: Database) -> None:
    db = any_database
    assert (route(db, "cuda"), route(db, "cpu"), route(db, "auto")) == ("gpu", "cpu", "cpu")
    with db.transaction() as session:
        repo = WorkerRepository(session)
        # A CPU worker consuming `gpu` (as in the e2e test) is not a GPU worker.
        repo.record(_worker("cpu-on-gpu-queue", ["gpu", "cpu"], ["cpu"]))
        # A GPU worker that stopped heartbeating 61 s ago is not alive.
        repo.record(_worker("stale-gpu", ["gpu"], ["cuda:0", "cpu"], age=61))
    assert route(db, "auto") == "cpu"
    with db.transaction() as session:
        WorkerRepository(session).record(_worker("gpu", ["gpu"], ["cuda:1", "cpu"], age=50))
    assert route(db, "auto") == "gpu"
    with db.transaction() as session:
        repo = WorkerRepository(session)
        assert repo.prune(before=utcnow() - timedelta(seconds=55)) == 1
        assert [w.id for w in repo.alive(since=utcnow() - timedelta(minutes=5))] == [
            "cpu-on-gpu-queue", "gpu",
        ]  # fmt: skip
        assert repo.beat("gpu", now=utcnow() - timedelta(seconds=70))
        assert not repo.beat("stale-gpu", now=utcnow())
    assert route(db, "auto") == "cpu"


def test_dispatch_records_the_queue_and_a_failed_send_is_retried(any_database: Database) -> None:
    db = any_database
    cuda, cpu = _job(db, device="cuda"), _job(db, device="cpu")
    down = RecordingDispatcher(fail=True)
    assert dispatch_job(db, down, cuda) is None
    up = RecordingDispatcher()
    assert dispatch_job(db, up, cpu) == "cpu"
    assert redispatch_unsent(db, up, age=0) == 1  # only the job whose send failed
    assert up.sent == [(cpu, "cpu"), (cuda, "gpu")]
    with db.transaction(write=False) as session:
        repo = JobRepository(session)
        assert [repo.get(cuda).queue, repo.get(cpu).queue] == ["gpu", "cpu"]  # type: ignore[union-attr]
    assert redispatch_unsent(db, up, age=0) == 0


def test_claim_of_a_named_job(any_database: Database) -> None:
    db = any_database
    job_id = _job(db, max_attempts=2)
    now = utcnow()
    with db.transaction() as session:
        repo = JobRepository(session)
        assert repo.claim_job(job_id, owner="a", now=now, lease_seconds=10).kind == "claimed"
        # A redelivery while a's lease is live: wait for it, then take over.
        busy = repo.claim_job(job_id, owner="b", now=now, lease_seconds=10)
        assert (busy.kind, busy.retry_in) == ("busy", 10.0)
        later = now + timedelta(seconds=11)
        assert repo.claim_job(job_id, owner="b", now=later, lease_seconds=10).kind == "claimed"
        job = repo.get(job_id)
        assert job is not None
        session.refresh(job)
        assert (job.attempts, job.lease_owner, job.last_worker) == (2, "b", "b")
        # Out of attempts once b's lease lapses too: nothing to claim.
        gone = repo.claim_job(job_id, owner="c", now=later + timedelta(seconds=11),
                              lease_seconds=10)  # fmt: skip
        assert gone.kind == "gone"
        assert repo.claim_job("no-such-job", owner="c", now=now, lease_seconds=1).kind == "gone"


def test_revoke_only_a_job_still_running_after_cancel(any_database: Database) -> None:
    db = any_database
    job_id = _job(db)
    dispatcher = RecordingDispatcher()
    with db.transaction() as session:
        repo = JobRepository(session)
        repo.claim_job(job_id, owner="a", now=utcnow(), lease_seconds=10)
    assert not revoke_if_still_running(db, dispatcher, job_id)
    with db.transaction() as session:
        assert JobRepository(session).request_cancel(job_id, now=utcnow())
    assert revoke_if_still_running(db, dispatcher, job_id)
    assert dispatcher.revoked == [job_id]


def test_migration_0006_goes_down_and_up(any_database: Database) -> None:
    db = any_database
    config = alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert "workers" not in inspect(db.engine).get_table_names()
    assert "requested_device" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert "workers" in inspect(db.engine).get_table_names()
    columns = {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    assert {"requested_device", "queue", "last_worker"} <= columns


@pytest.mark.parametrize("url", ["sqlite:///graft.db", "sqlite:////tmp/x.db"])
def test_celery_refuses_sqlite(url: str) -> None:
    from app.config import Settings
    from app.executors.celery import ExecutorConfigError, check_celery_settings

    settings = Settings(database_url=url, broker_url="amqp://guest:guest@127.0.0.1:5672//")
    with pytest.raises(ExecutorConfigError, match="GRAFT_DATABASE_URL is SQLite"):
        check_celery_settings(settings)
    with pytest.raises(ExecutorConfigError, match="GRAFT_BROKER_URL"):
        check_celery_settings(Settings(database_url="postgresql+psycopg://x@h/db"))


def test_recovery_resends_orphans_and_fails_the_exhausted(any_database: Database) -> None:
    db = any_database
    orphan, exhausted, live = _job(db), _job(db, max_attempts=1), _job(db)
    past = utcnow() - timedelta(seconds=120)
    with db.transaction() as session:
        repo = JobRepository(session)
        for job_id in (orphan, exhausted):  # claimed, then their task ended unfinished
            assert repo.claim_job(job_id, owner="a", now=past, lease_seconds=10).kind == "claimed"
        assert repo.claim_job(live, owner="b", now=utcnow(), lease_seconds=60).kind == "claimed"
        repo.set_queue(live, "cpu")
    dispatcher = RecordingDispatcher()
    assert redispatch_unsent(db, dispatcher, age=15) == 1
    assert dispatcher.sent == [(orphan, "cpu")]
    with db.transaction(write=False) as session:
        failed = JobRepository(session).get(exhausted)
        assert failed is not None
        assert (failed.status, failed.error_type) == ("failed", "worker-lost")


def test_celery_settings_that_make_a_crash_safe() -> None:
    from app.config import Settings
    from app.executors.celery import make_celery

    amqp = make_celery(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//",
                                queue_prefix="run1", task_time_limit_seconds=3600))  # fmt: skip
    conf = amqp.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert (conf.worker_prefetch_multiplier, conf.task_time_limit) == (1, 3600)
    assert sorted(q.name for q in conf.task_queues) == ["run1.cpu", "run1.gpu"]
    assert {q.exchange.name for q in conf.task_queues} == {"run1.jobs"}
    assert (conf.control_exchange, conf.event_exchange) == ("run1.control", "run1.events")
    assert "visibility_timeout" not in (conf.broker_transport_options or {})
    redis = make_celery(Settings(broker_url="redis://127.0.0.1:6379/0",
                                 task_time_limit_seconds=3600))  # fmt: skip
    assert redis.conf.broker_transport_options == {"visibility_timeout": 4200}
