"""Repositories against real, Alembic-migrated SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from app.db.base import utcnow
from app.db.models import Checkpoint, CheckpointFile, Job, JobStatus
from app.db.repositories import CheckpointRepository, JobEnd, JobRepository, Lease
from app.db.session import Database
from app.services.inspection import tensor_pages


def _checkpoint(db: Database, sha: str = "a" * 64) -> str:
    with db.transaction() as session:
        checkpoint = Checkpoint(
            sha256=sha,
            filename="x.pth",
            size=10,
            format="torch-zip",
            entry=None,
            stripped_prefix=None,
            tensors=2,
            elements=6,
            bytes=24,
            by_dtype={"float32": 2},
            ignored=[],
            files=[CheckpointFile(position=0, filename="x.pth", sha256=sha, size=10)],
        )
        CheckpointRepository(session).add(
            checkpoint,
            tensor_pages(
                [
                    {"key": "w", "shape": [2, 2], "dtype": "float32", "kind": "parameter"},
                    {"key": "b", "shape": [2], "dtype": "float32", "kind": "parameter"},
                ]
            ),
        )
        return checkpoint.id


def _job(db: Database, source: str, *, max_attempts: int = 3) -> str:
    with db.transaction() as session:
        job = Job(source_id=source, target={"checkpoint": source}, target_checkpoint_id=source)
        job.max_attempts = max_attempts
        return JobRepository(session).add(job).id


def test_schema_comes_from_migrations(any_database: Database) -> None:
    names = set(inspect(any_database.engine).get_table_names())
    tables = {"checkpoints", "checkpoint_files", "checkpoint_tensor_pages", "jobs", "artifacts"}
    assert tables <= names
    assert "alembic_version" in names


def test_sqlite_is_durable(sqlite_database: Database) -> None:
    with sqlite_database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_write_sessions_begin_immediate(sqlite_database: Database) -> None:
    # A writer holds the RESERVED lock from BEGIN: a second BEGIN IMMEDIATE must wait.
    import sqlite3

    with sqlite_database.transaction() as session:
        session.execute(text("SELECT 1"))
        other = sqlite3.connect(sqlite_database.engine.url.database, timeout=0.05)
        other.isolation_level = None
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    with sqlite_database.transaction(write=False) as session:
        session.execute(text("SELECT 1"))
        other = sqlite3.connect(sqlite_database.engine.url.database, timeout=0.05)
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")  # a reader does not block writers
        other.execute("ROLLBACK")
        other.close()


def test_checkpoint_roundtrip_and_tensor_pages(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    with any_database.transaction(write=False) as session:
        repo = CheckpointRepository(session)
        assert repo.get_by_sha256("a" * 64, owner="local").id == cid  # type: ignore[union-attr]
        rows, count = repo.tensors(cid, offset=1, limit=10)
        assert count == 2
        assert [(r.key, r.shape) for r in rows] == [("b", [2])]
        items, total = repo.page(offset=0, limit=10)
        assert total == 1
        assert items[0].files[0].filename == "x.pth"
        assert repo.referenced_blobs(["a" * 64, "f" * 64]) == {"a" * 64}


def test_claim_is_exclusive_and_ordered(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    first, second = _job(any_database, cid), _job(any_database, cid)
    now = utcnow()
    with any_database.transaction() as session:
        assert JobRepository(session).has_work(now=now)
        assert JobRepository(session).claim(owner="w1", now=now, lease_seconds=30) == Lease(
            first, "w1", 1
        )
    with any_database.transaction() as session:
        assert JobRepository(session).claim(owner="w2", now=now, lease_seconds=30) == Lease(
            second, "w2", 1
        )
    with any_database.transaction() as session:
        assert JobRepository(session).claim(owner="w3", now=now, lease_seconds=30) is None
        assert not JobRepository(session).has_work(now=now)
        assert CheckpointRepository(session).in_use(cid)


def test_expired_lease_is_reclaimed_and_old_owner_cannot_finish(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    job_id = _job(any_database, cid)
    now = utcnow()
    with any_database.transaction() as session:
        dead = JobRepository(session).claim(owner="dead", now=now, lease_seconds=1)
    later = now + timedelta(seconds=5)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        alive = repo.claim(owner="alive", now=later, lease_seconds=30)
        assert alive == Lease(job_id, "alive", 2)
        assert dead == Lease(job_id, "dead", 1)
        assert repo.heartbeat(dead, now=later, lease_seconds=30) == (False, False)
        assert not repo.finish(dead, now=later, end=JobEnd(status=JobStatus.succeeded))
        assert repo.finish(alive, now=later, end=JobEnd(status=JobStatus.succeeded, ok=True))
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.attempts, job.progress) == ("succeeded", 2, 1.0)


def test_a_stale_token_is_refused_even_to_the_same_holder(any_database: Database) -> None:
    # The same holder name claiming again (a redelivery to the same process) fences its own
    # first claim: only the newest token may beat, release or finish.
    cid = _checkpoint(any_database)
    job_id = _job(any_database, cid)
    now = utcnow()
    with any_database.transaction() as session:
        first = JobRepository(session).claim(owner="w", now=now, lease_seconds=30)
        assert first == Lease(job_id, "w", 1)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        second = repo.claim_job(job_id, owner="w", now=now, lease_seconds=30, take_over=True)
        assert (second.kind, second.lease) == ("claimed", Lease(job_id, "w", 2))
        assert repo.heartbeat(first, now=now, lease_seconds=30) == (False, False)
        assert not repo.release(first, now=now)
        assert not repo.expire(first, now=now)
        assert not repo.finish(first, now=now, end=JobEnd(status=JobStatus.failed))
        assert repo.finish(Lease(job_id, "w", 2), now=now, end=JobEnd(status=JobStatus.succeeded))
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.attempts, job.lease_token) == ("succeeded", 2, 2)


def test_attempts_are_bounded(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    job_id = _job(any_database, cid, max_attempts=2)
    now = utcnow()
    for _ in range(2):
        with any_database.transaction() as session:
            lease = JobRepository(session).claim(owner="w", now=now, lease_seconds=1)
            assert lease is not None and lease.job_id == job_id
        now += timedelta(seconds=5)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        assert repo.claim(owner="w", now=now, lease_seconds=1) is None
        assert len(repo.fail_exhausted(now=now)) == 1
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.error_type) == ("failed", "worker-lost")


def test_a_lapsed_job_whose_cancel_was_asked_is_cancelled_never_failed(
    any_database: Database,
) -> None:
    # The race the reaper had: its failure of an exhausted job and a cancel of that job in
    # flight at once. A cancel that lands first wins, whichever statement runs first.
    cid = _checkpoint(any_database)
    job_id = _job(any_database, cid, max_attempts=1)
    now = utcnow()
    with any_database.transaction() as session:
        assert JobRepository(session).claim(owner="w", now=now, lease_seconds=1) is not None
    with any_database.transaction() as session:
        assert JobRepository(session).request_cancel(job_id, now=now)
    now += timedelta(seconds=5)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        assert repo.fail_exhausted(now=now) == []
        assert repo.cancel_abandoned(now=now) == [job_id]
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.error_type) == ("cancelled", None)


def test_cancel_queued_and_running(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    queued, running = _job(any_database, cid), _job(any_database, cid)
    now = utcnow()
    with any_database.transaction() as session:
        repo = JobRepository(session)
        lease = repo.claim(owner="w", now=now, lease_seconds=30)
        assert lease == Lease(queued, "w", 1)
        # `queued` is now running: cancel must be requested, not applied
        assert not repo.cancel_queued(queued, now=now)
        assert repo.request_cancel(queued, now=now)
        assert repo.cancel_queued(running, now=now)
        assert repo.heartbeat(lease, now=now, lease_seconds=30) == (True, True)
    with any_database.transaction(write=False) as session:
        assert JobRepository(session).get(running).status == "cancelled"  # type: ignore[union-attr]


def _owned_job(db: Database, source: str, owner: str) -> str:
    with db.transaction() as session:
        job = Job(owner=owner, source_id=source, target={"checkpoint": source})
        return JobRepository(session).add(job).id


def test_claims_go_round_robin_across_owners(any_database: Database) -> None:
    # Issue 23: one owner's burst queued first, another owner's single job behind it.
    cid = _checkpoint(any_database)
    burst = [_owned_job(any_database, cid, "team-a") for _ in range(4)]
    single = _owned_job(any_database, cid, "team-b")
    now = utcnow()

    leases: dict[str, Lease] = {}

    def claim(worker: str, at: timedelta) -> str | None:
        with any_database.transaction() as session:
            lease = JobRepository(session).claim(owner=worker, now=now + at, lease_seconds=30)
        if lease is None:
            return None
        leases[lease.job_id] = lease
        return lease.job_id

    def finish(job_id: str, worker: str, at: timedelta) -> None:
        with any_database.transaction() as session:
            end = JobEnd(status=JobStatus.succeeded, ok=True)
            assert leases[job_id].owner == worker
            assert JobRepository(session).finish(leases[job_id], now=now + at, end=end)

    # One worker: team-a's oldest job runs; when it ends, team-b (never served) goes next,
    # not the rest of the burst.
    assert claim("w1", timedelta(seconds=1)) == burst[0]
    finish(burst[0], "w1", timedelta(seconds=2))
    assert claim("w1", timedelta(seconds=3)) == single
    # Two workers: the owner with fewer running jobs is served first.
    assert claim("w2", timedelta(seconds=4)) == burst[1]
    finish(single, "w1", timedelta(seconds=5))
    assert claim("w1", timedelta(seconds=6)) == burst[2]
    with any_database.transaction(write=False) as session:
        assert JobRepository(session).count_active("team-a") == 3
        assert JobRepository(session).count_active("team-b") == 0


def _job_id(lease: Lease | None) -> str | None:
    return None if lease is None else lease.job_id


def test_a_claim_without_mlflow_skips_the_jobs_that_need_it(any_database: Database) -> None:
    source = _checkpoint(any_database)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        target = {"checkpoint": source}
        needs = [
            repo.add(Job(source_ref={"uri": "models:/m/1"}, target=target)).id,
            repo.add(Job(source_ref={"uri": "runs:/abc/model"}, target=target)).id,
            repo.add(Job(source_id=source, target=target, register={"name": "r"})).id,
        ]
        others = [
            repo.add(Job(source_ref={"uri": "https://example.com/a.pt"}, target=target)).id,
            repo.add(Job(source_id=source, target=target)).id,
        ]
    now = utcnow()
    with any_database.transaction() as session:
        repo = JobRepository(session)
        without = [_job_id(repo.claim(owner="w", now=now, lease_seconds=5, mlflow=False))
                   for _ in range(3)]  # fmt: skip
        assert not repo.has_work(now=now, mlflow=False)
        assert repo.has_work(now=now, mlflow=True)
        with_it = [_job_id(repo.claim(owner="m", now=now, lease_seconds=5, mlflow=True))
                   for _ in range(4)]  # fmt: skip
    assert (set(without[:2]), without[2]) == (set(others), None)
    assert (set(with_it[:3]), with_it[3]) == (set(needs), None)
