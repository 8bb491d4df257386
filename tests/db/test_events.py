"""Job events and idempotency records against real, Alembic-migrated databases."""

from __future__ import annotations

from datetime import timedelta

from app.db.base import utcnow
from app.db.repositories import IdempotencyRepository, JobEventRepository
from app.db.session import Database
from tests.db.test_repositories import _checkpoint, _job


def test_events_are_numbered_per_job_and_read_after_an_id(any_database: Database) -> None:
    db = any_database
    source = _checkpoint(db)
    one, two = _job(db, source), _job(db, source)
    with db.transaction() as session:
        repo = JobEventRepository(session)
        assert [repo.append(one, "progress", {"n": i}, terminal=False) for i in range(3)] == [
            1,
            2,
            3,
        ]
        assert repo.append(two, "status", {"status": "queued"}, terminal=False) == 1
        assert repo.append(one, "status", {"status": "failed"}, terminal=True) == 4
    with db.transaction(write=False) as session:
        repo = JobEventRepository(session)
        assert [(e.seq, e.data) for e in repo.after(one, 2)] == [
            (3, {"n": 2}),
            (4, {"status": "failed"}),
        ]
        last = repo.get(one, 4)
        assert last is not None and last.terminal


def test_idempotency_records_begin_once_expire_and_purge(any_database: Database) -> None:
    db = any_database
    now = utcnow()
    day = timedelta(hours=24)
    with db.transaction() as session:
        repo = IdempotencyRepository(session)
        assert repo.begin(
            "a", "k", scopes=["read"], now=now, expires_at=now + day, stale_before=now - day
        )
        assert not repo.begin(
            "a", "k", scopes=["read"], now=now, expires_at=now + day, stale_before=now - day
        )
        assert repo.begin(
            "b", "k", scopes=["read"], now=now, expires_at=now + day, stale_before=now - day
        )
        repo.complete(
            "a", "k", fingerprint="f" * 64, status_code=202, headers=[["x", "y"]], body=b"{}"
        )
    with db.transaction() as session:
        repo = IdempotencyRepository(session)
        record = repo.get("a", "k")
        assert record is not None and (record.status_code, record.body) == (202, b"{}")
        later = now + day + timedelta(seconds=1)
        # b's request never finished and is now stale; a's answer expired: both start afresh.
        assert repo.begin(
            "b",
            "k",
            scopes=["read"],
            now=now,
            expires_at=now + day,
            stale_before=now + timedelta(seconds=1),
        )
        assert repo.purge(now=later) == 2
        assert repo.get("a", "k") is None
