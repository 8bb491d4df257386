"""Repositories against real, Alembic-migrated SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from app.db.base import utcnow
from app.db.models import Checkpoint, CheckpointFile, Job, JobStatus
from app.db.repositories import CheckpointRepository, JobRepository
from app.db.session import Database


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
            [
                {"key": "w", "shape": [2, 2], "dtype": "float32", "kind": "parameter"},
                {"key": "b", "shape": [2], "dtype": "float32", "kind": "parameter"},
            ],
        )
        return checkpoint.id


def _job(db: Database, source: str, *, max_attempts: int = 3) -> str:
    with db.transaction() as session:
        job = Job(source_id=source, target={"checkpoint": source}, target_checkpoint_id=source)
        job.max_attempts = max_attempts
        return JobRepository(session).add(job).id


def test_schema_comes_from_migrations(any_database: Database) -> None:
    names = set(inspect(any_database.engine).get_table_names())
    assert {"checkpoints", "checkpoint_files", "checkpoint_tensors", "jobs", "artifacts"} <= names
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
        assert JobRepository(session).claim(owner="w1", now=now, lease_seconds=30) == first
    with any_database.transaction() as session:
        assert JobRepository(session).claim(owner="w2", now=now, lease_seconds=30) == second
    with any_database.transaction() as session:
        assert JobRepository(session).claim(owner="w3", now=now, lease_seconds=30) is None
        assert not JobRepository(session).has_work(now=now)
        assert CheckpointRepository(session).in_use(cid)


def test_expired_lease_is_reclaimed_and_old_owner_cannot_finish(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    job_id = _job(any_database, cid)
    now = utcnow()
    with any_database.transaction() as session:
        JobRepository(session).claim(owner="dead", now=now, lease_seconds=1)
    later = now + timedelta(seconds=5)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        assert repo.claim(owner="alive", now=later, lease_seconds=30) == job_id
        assert repo.heartbeat(job_id, owner="dead", now=later, lease_seconds=30) == (False, False)
        assert not repo.finish(job_id, owner="dead", now=later, status=JobStatus.succeeded)
        assert repo.finish(job_id, owner="alive", now=later, status=JobStatus.succeeded, ok=True)
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.attempts, job.progress) == ("succeeded", 2, 1.0)


def test_attempts_are_bounded(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    job_id = _job(any_database, cid, max_attempts=2)
    now = utcnow()
    for _ in range(2):
        with any_database.transaction() as session:
            assert JobRepository(session).claim(owner="w", now=now, lease_seconds=1) == job_id
        now += timedelta(seconds=5)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        assert repo.claim(owner="w", now=now, lease_seconds=1) is None
        assert len(repo.fail_exhausted(now=now)) == 1
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.error_type) == ("failed", "worker-lost")


def test_cancel_queued_and_running(any_database: Database) -> None:
    cid = _checkpoint(any_database)
    queued, running = _job(any_database, cid), _job(any_database, cid)
    now = utcnow()
    with any_database.transaction() as session:
        repo = JobRepository(session)
        assert repo.claim(owner="w", now=now, lease_seconds=30) == queued
        # `queued` is now running: cancel must be requested, not applied
        assert not repo.cancel_queued(queued, now=now)
        assert repo.request_cancel(queued, now=now)
        assert repo.cancel_queued(running, now=now)
        assert repo.heartbeat(queued, owner="w", now=now, lease_seconds=30) == (True, True)
    with any_database.transaction(write=False) as session:
        assert JobRepository(session).get(running).status == "cancelled"  # type: ignore[union-attr]


def test_a_claim_without_mlflow_skips_the_jobs_that_need_it(any_database: Database) -> None:
    source = _checkpoint(any_database)
    with any_database.transaction() as session:
        repo = JobRepository(session)
        target = {"checkpoint": source}
        needs = [
            repo.add(Job(source_ref={"uri": "models:/m/1"}, target=target)).id,
            repo.add(Job(source_id=source, target=target, register={"name": "r"})).id,
        ]
        others = [
            repo.add(Job(source_ref={"uri": "https://example.com/a.pt"}, target=target)).id,
            repo.add(Job(source_id=source, target=target)).id,
        ]
    now = utcnow()
    with any_database.transaction() as session:
        repo = JobRepository(session)
        without = [repo.claim(owner="w", now=now, lease_seconds=5, mlflow=False) for _ in range(3)]
        assert not repo.has_work(now=now, mlflow=False)
        assert repo.has_work(now=now, mlflow=True)
        with_it = [repo.claim(owner="m", now=now, lease_seconds=5, mlflow=True) for _ in range(3)]
    assert (set(without[:2]), without[2]) == (set(others), None)
    assert (set(with_it[:2]), with_it[2]) == (set(needs), None)
