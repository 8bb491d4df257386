"""Object store to object store: a job on S3 storage streams its safetensors source by ranged
GETs to a multipart upload of its weights, with no local file larger than a part, and
records exactly what the local path (download, convert to a file, upload) records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.db.session import Database
from app.executors.local import JobRunner
from app.executors.runtime import JobRuntime
from app.sandbox.runner import Limits
from app.services.jobs.execution import JobSettings
from app.storage import S3BlobStore
from tests.executors.test_local import _get, _job, _register
from tests.s3server import S3Server
from tests.storage.conftest import s3_store

PART = 64 * 1024  # rclone takes parts under S3's 5 MiB minimum


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(96, 256), nn.ReLU(), nn.Linear(256, 128), nn.LayerNorm(128))


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _run(db: Database, store: S3BlobStore, job_id: str, *, stream: bool) -> dict[str, int]:
    """Run the job; returns the worker's scratch files (name -> size) as they were when the
    job began publishing (the conversion child done, its outputs not yet published)."""
    seen: dict[str, int] = {}

    def look(stage: str, tick: Any) -> None:
        if stage == "publishing":
            seen.update(_files(store.scratch.root))

    # Streaming, the child may not write a file larger than a part (RLIMIT_FSIZE).
    limits = Limits(file_size=PART) if stream else Limits()
    runtime = JobRuntime(
        db, store, JobSettings(limits=limits, device="auto", stream=stream),
        lease_seconds=5.0, heartbeat_seconds=0.1, poll_seconds=0.05, stage_hooks=(look,),
    )  # fmt: skip
    assert JobRunner(runtime).run_once()
    return seen


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_streamed_job_is_the_local_job(
    sqlite_database: Database, s3_server: S3Server, tmp_path: Path, dtype: str | None
) -> None:
    store = s3_store(s3_server, tmp_path / "scratch", part_size=PART)
    src, tgt = tmp_path / "src.safetensors", tmp_path / "tgt.safetensors"
    save_file(_net(0).state_dict(), src)
    save_file(_net(1).state_dict(), tgt)
    assert src.stat().st_size > 3 * PART
    source, target = _register(sqlite_database, store, src), _register(sqlite_database, store, tgt)
    fields = {"output_dtype": dtype} if dtype else {}
    streamed_id = _job(sqlite_database, source, target, **fields)
    local_id = _job(sqlite_database, source, target, **fields)

    streamed_scratch = _run(sqlite_database, store, streamed_id, stream=True)
    local_scratch = _run(sqlite_database, store, local_id, stream=False)

    streamed, local = _get(sqlite_database, streamed_id), _get(sqlite_database, local_id)
    assert streamed.status == local.status == "succeeded", (
        streamed.error_message,
        local.error_message,
    )
    # Nothing larger than a part on the worker's disk while streaming; the local path held
    # the source and the weights there (so the observation can tell the two apart).
    assert streamed_scratch and max(streamed_scratch.values()) <= PART, streamed_scratch
    assert not any(name.startswith("source") for name in streamed_scratch)
    assert max(local_scratch.values()) >= src.stat().st_size, local_scratch

    def rows(job: Any) -> dict[str, tuple[str, int, str]]:
        return {a.name: (a.sha256, a.size, a.media_type) for a in job.artifacts}

    assert set(rows(streamed)) == {"report", "report-text", "manifest", "weights", "attestation"}
    assert rows(streamed)["weights"] == rows(local)["weights"]
    # The same statement, but for the job's own name in it.
    texts = []
    for job in (streamed, local):
        row = {a.name: a for a in job.artifacts}["attestation"]
        store.link_into(row.sha256, tmp_path / f"{job.id}.intoto.json")
        texts.append((tmp_path / f"{job.id}.intoto.json").read_text().replace(job.id, "JOB"))
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["subject"][0]["digest"]["sha256"] == rows(local)["weights"][0]
    weights = {a.name: a for a in streamed.artifacts}["weights"]
    assert weights.filename == f"{streamed_id}.safetensors"
    assert store.exists(weights.sha256)
    store.link_into(weights.sha256, tmp_path / "out.safetensors")
    loaded = load_file(tmp_path / "out.safetensors")
    expected = _net(0).state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        want = value if dtype is None else value.to(torch.bfloat16)
        assert torch.equal(loaded[key], want), key
    # The upload's temp key went away once published; the scratch is empty again.
    assert not list(s3_server.client().list_objects_v2(
        Bucket=store.bucket, Prefix=f"{store.prefix}tmp/").get("Contents", []))  # fmt: skip
    assert list(store.scratch.root.iterdir()) == []


def test_a_failed_streamed_job_leaves_nothing(
    sqlite_database: Database, s3_server: S3Server, tmp_path: Path
) -> None:
    """A source that is not what its record says fails the job, naming the failed GET; the
    upload is aborted and nothing is left behind."""
    store = s3_store(s3_server, tmp_path / "scratch", part_size=PART)
    src, tgt = tmp_path / "src.safetensors", tmp_path / "tgt.safetensors"
    save_file(_net(0).state_dict(), src)
    save_file(_net(1).state_dict(), tgt)
    source, target = _register(sqlite_database, store, src), _register(sqlite_database, store, tgt)
    # The blob shrinks under its record: every ranged GET past its end is refused.
    with sqlite_database.transaction() as session:
        from app.db.repositories import CheckpointRepository

        checkpoint = CheckpointRepository(session).get(source)
        assert checkpoint is not None
        blob = checkpoint.sha256
    key = store.key(blob)
    s3_server.client().put_object(Bucket=store.bucket, Key=key, Body=src.read_bytes()[:1000])
    job_id = _job(sqlite_database, source, target)
    _run(sqlite_database, store, job_id, stream=True)
    job = _get(sqlite_database, job_id)
    assert job.status == "failed"
    assert job.error_type == "internal-error"
    assert "ranged GET of src.safetensors" in (job.error_message or ""), job.error_message
    assert not list(s3_server.client().list_objects_v2(
        Bucket=store.bucket, Prefix=f"{store.prefix}tmp/").get("Contents", []))  # fmt: skip
    assert list(store.scratch.root.iterdir()) == []
