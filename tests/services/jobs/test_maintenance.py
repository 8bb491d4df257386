"""The reaper of ``graft serve`` (issue 12, item 9): lapsed leases and unreferenced blobs."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.db.base import utcnow
from app.db.models import Checkpoint, CheckpointFile, Job
from app.services.jobs.maintenance import BlobCollector, reap_leases
from app.storage.file import FileBlobStore


def _store(tmp_path: Path) -> FileBlobStore:
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    return store


def _age(store: FileBlobStore, sha: str, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(store.path(sha), (past, past))


def _checkpoint(session: Any, sha: str) -> Checkpoint:
    checkpoint = Checkpoint(
        sha256=sha,
        filename="m.safetensors",
        size=4,
        format="safetensors",
        tensors=1,
        elements=1,
        bytes=4,
        by_dtype={},
        ignored=[],
        files=[CheckpointFile(position=0, filename="m.safetensors", sha256=sha, size=4)],
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def test_lapsed_leases_are_settled(any_database: Any, tmp_path: Path) -> None:
    store = _store(tmp_path)
    sha, _ = store.put_bytes(b"1234")
    now = utcnow()
    past, future = now - timedelta(seconds=5), now + timedelta(seconds=60)
    rows = {
        "retry": {"attempts": 1, "lease_expires_at": past},
        "exhausted": {"attempts": 3, "lease_expires_at": past},
        "cancelled": {"attempts": 1, "lease_expires_at": past, "cancel_requested": True},
        "alive": {"attempts": 1, "lease_expires_at": future},
    }
    ids: dict[str, str] = {}
    with any_database.transaction() as session:
        source = _checkpoint(session, sha)
        for name, values in rows.items():
            job = Job(
                source_id=source.id,
                target={"checkpoint": source.id},
                status="running",
                lease_owner="dead",
                max_attempts=3,
                **values,
            )
            session.add(job)
            session.flush()
            ids[name] = job.id
    sweep = reap_leases(any_database)
    assert (sweep.requeued, sweep.failed, sweep.cancelled) == (1, 1, 1)
    with any_database.transaction(write=False) as session:
        state = {n: session.get(Job, i) for n, i in ids.items()}
        assert {n: str(j.status) for n, j in state.items()} == {
            "retry": "queued",
            "exhausted": "failed",
            "cancelled": "cancelled",
            "alive": "running",
        }
        assert state["retry"].lease_owner is None and state["retry"].attempts == 1
        assert state["exhausted"].error_type == "worker-lost"
    assert reap_leases(any_database) == type(sweep)(0, 0, 0)


def test_blobs_are_collected_only_when_unreferenced_and_unclaimed(
    any_database: Any, tmp_path: Path
) -> None:
    store = _store(tmp_path)
    kept, freed, young = (store.put_bytes(data)[0] for data in (b"kept", b"freed", b"young"))
    with any_database.transaction() as session:
        _checkpoint(session, kept)
    _age(store, kept, 300)
    _age(store, freed, 300)
    collector = BlobCollector(any_database, store, claim_seconds=60)
    collector.add([kept, freed, young])
    assert collector.collect() == 1
    assert store.modified(freed) is None
    assert store.path(kept).read_bytes() == b"kept"
    assert store.path(young).read_bytes() == b"young"  # published 0 s ago: maybe being claimed
    assert collector.pending() == 1
    _age(store, young, 300)
    assert collector.collect() == 1
    assert store.modified(young) is None
    assert collector.pending() == 0


def test_a_blob_referenced_at_the_last_moment_is_put_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    sha, _ = store.put_bytes(b"late")
    _age(store, sha, 300)
    seen: list[bool] = []

    def referenced() -> bool:  # asked while the blob is moved aside
        seen.append(store.path(sha).exists())
        return True

    assert not store.collect(sha, claimed_since=time.time() - 60, referenced=referenced)
    assert seen == [False]
    assert store.path(sha).read_bytes() == b"late"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_a_blob_republished_while_moved_aside_survives(tmp_path: Path) -> None:
    store = _store(tmp_path)
    sha, _ = store.put_bytes(b"again")
    _age(store, sha, 300)

    def republish() -> bool:  # an upload of the same bytes publishes while the blob is aside
        assert store.put_bytes(b"again")[0] == sha
        return False

    assert not store.collect(sha, claimed_since=time.time() - 60, referenced=republish)
    assert store.path(sha).read_bytes() == b"again"
