"""The job runner in-process against a migrated SQLite file and a real blob store."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from app.api.schemas import JobPublic
from app.db.base import utcnow
from app.db.models import Job
from app.db.repositories import CheckpointRepository, JobRepository, Lease
from app.db.session import Database
from app.engine.architectures import ArchitectureRef
from app.engine.readers import inspect_source
from app.executors import lease
from app.executors.local import JobRunner
from app.executors.runtime import JobRuntime
from app.sandbox.runner import Limits
from app.services.checkpoints import publish_checkpoint
from app.services.jobs.execution import JobSettings
from app.storage import FileBlobStore, StagedFile
from tests.e2e.helpers import until
from tests.plugins.stage_delay import pause_at_stages


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _register(db: Database, store: FileBlobStore, path: Path) -> str:
    summary = inspect_source(path)  # trusted test file: inspecting in-process is fine here
    with store.workdir() as work:
        staged = StagedFile(work / path.name)
        staged.write(path.read_bytes())
        staged.close()
        with db.transaction() as session:
            checkpoint, _ = publish_checkpoint(session, store, [staged], summary)
            return checkpoint.id


def _job(db: Database, source: str | None, target: str, **fields: object) -> str:
    with db.transaction() as session:
        job = Job(source_id=source, target={"checkpoint": target}, target_checkpoint_id=target)
        for name, value in fields.items():
            setattr(job, name, value)
        return JobRepository(session).add(job).id


def _get(db: Database, job_id: str) -> Job:
    with db.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        _ = job.artifacts
        return job


def source_and_target(db: Database, tmp_path: Path) -> tuple[Database, FileBlobStore, str, str]:
    """A blob store under ``tmp_path`` and two registered ``_net`` checkpoints: source, target."""
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    src, tgt = tmp_path / "src.pth", tmp_path / "tgt.pth"
    torch.save(_net(0).state_dict(), src)
    torch.save(_net(1).state_dict(), tgt)
    return db, store, _register(db, store, src), _register(db, store, tgt)


@pytest.fixture
def setup(sqlite_database: Database, tmp_path: Path) -> tuple[Database, FileBlobStore, str, str]:
    return source_and_target(sqlite_database, tmp_path)


def _runner(
    db: Database,
    store: FileBlobStore,
    *,
    stage_delay: float = 0.0,
    lease_seconds: float = 5.0,
    architectures: tuple[ArchitectureRef, ...] = (),
) -> JobRunner:
    """A runner on device ``auto``; ``stage_delay`` pauses each job at each stage."""
    runtime = JobRuntime(
        db,
        store,
        JobSettings(limits=Limits(), device="auto", architectures=architectures),
        lease_seconds=lease_seconds,
        heartbeat_seconds=0.1,
        poll_seconds=0.05,
        stage_hooks=(pause_at_stages(stage_delay),) if stage_delay else (),
    )
    return JobRunner(runtime)


def test_job_succeeds_with_artifacts(setup: tuple[Database, FileBlobStore, str, str]) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target)
    runner = _runner(db, store)
    assert runner.run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok, job.progress, job.attempts, job.device) == (
        "succeeded",
        True,
        1.0,
        1,
        "cpu",
    )
    # Who ran it stays on the job once it finished (the lease is gone by then).
    assert job.lease_owner is None
    assert JobPublic.of(job).worker == job.last_worker == runner.owner
    names = {a.name: a for a in job.artifacts}
    assert set(names) == {"attestation", "manifest", "report", "report-text", "weights"}
    report = json.loads(store.path(names["report"].sha256).read_bytes())
    assert report["summary"]["loaded"] == 9
    with db.transaction(write=False) as session:  # the digest taken at upload, not recomputed
        uploaded = CheckpointRepository(session).get(source)
        assert uploaded is not None
        assert report["source"]["sha256"] == uploaded.sha256
    weights = load_file(store.path(names["weights"].sha256))
    for key, value in _net(0).state_dict().items():
        assert torch.equal(weights[key], value), key


def test_dry_run_has_no_weights(setup: tuple[Database, FileBlobStore, str, str]) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target, dry_run=True)
    assert _runner(db, store).run_once()
    job = _get(db, job_id)
    assert job.status == "succeeded"
    assert {a.name for a in job.artifacts} == {"manifest", "report", "report-text"}


def test_strict_refusal_fails_with_report(setup: tuple[Database, FileBlobStore, str, str]) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target, recipe={"version": 1, "drop": ["3.*"], "strict": True})
    assert _runner(db, store).run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok, job.error_type) == ("failed", False, "conversion-refused")
    assert {a.name for a in job.artifacts} == {"manifest", "report", "report-text"}


def test_unmatched_rule_and_empty_conversion_fail_as_refusals(
    setup: tuple[Database, FileBlobStore, str, str],
) -> None:
    db, store, source, target = setup
    typo = _job(db, source, target, recipe={"version": 1, "drop": ["3.wieght"]})
    empty = _job(db, source, target, recipe={"version": 1, "only": ["3.*"], "drop": ["3.*"]})
    runner = _runner(db, store)
    assert runner.run_once() and runner.run_once()

    job = _get(db, typo)
    assert (job.status, job.ok, job.error_type) == ("failed", False, "conversion-refused")
    assert job.error_message == (
        "the recipe's policy refused the conversion: unmatched: drop[0] (3.wieght) matched no "
        "key; check it for a typo (unmatched: error; `unmatched: warn` lets it pass); see the "
        "report"
    )
    assert {a.name for a in job.artifacts} == {"manifest", "report", "report-text"}
    job = _get(db, empty)
    assert (job.status, job.error_type) == ("failed", "conversion-refused")
    assert job.error_message is not None and "refused the conversion: empty:" in job.error_message
    assert job.warnings is not None and job.warnings[0].startswith("nothing_loaded")
    public = JobPublic.of(job)
    assert public.warnings == job.warnings
    assert public.error is not None and public.error.type == "conversion-refused"


def test_warnings_are_on_the_job(setup: tuple[Database, FileBlobStore, str, str]) -> None:
    db, store, source, target = setup
    recipe = {"version": 1, "drop": ["3.*", "fc.*"], "unmatched": "warn"}
    job_id = _job(db, source, target, recipe=recipe)
    assert _runner(db, store).run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok) == ("succeeded", True)
    assert job.warnings == ["unmatched: drop[1] (fc.*) matched no key; check it for a typo"]
    assert JobPublic.of(job).model_dump()["warnings"] == job.warnings


def test_running_job_can_be_cancelled(setup: tuple[Database, FileBlobStore, str, str]) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target)
    runner = _runner(db, store, stage_delay=2.0)
    thread = threading.Thread(target=runner.run_once)
    thread.start()
    until(lambda: _get(db, job_id).status == "running", timeout=60)
    with db.transaction() as session:
        assert JobRepository(session).request_cancel(job_id, now=utcnow())
    thread.join(10)
    job = _get(db, job_id)
    assert job.status == "cancelled"
    assert job.artifacts == []


def test_worker_that_lost_its_lease_cannot_complete(
    setup: tuple[Database, FileBlobStore, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target)
    slow = _runner(db, store, stage_delay=1.0, lease_seconds=0.3)
    # A stalled worker (think SIGSTOP): no heartbeats, so its lease lapses and another
    # worker takes the job over; when it wakes up its result must be discarded.
    real = lease._heartbeat

    def stalled(runtime: JobRuntime, held: Lease, *rest: Any) -> None:
        if held.owner != slow.owner:
            real(runtime, held, *rest)

    monkeypatch.setattr(lease, "_heartbeat", stalled)
    thread = threading.Thread(target=slow.run_once)
    thread.start()

    def lapsed() -> bool:
        # The slow worker holds the job and its lease has run out: the takeover can begin.
        job = _get(db, job_id)
        expires = job.lease_expires_at
        return job.lease_owner == slow.owner and expires is not None and expires < utcnow()

    until(lapsed, timeout=60)
    assert _runner(db, store).run_once()
    thread.join(10)
    job = _get(db, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert len([a for a in job.artifacts if a.name == "weights"]) == 1


def test_bad_skeleton_fails_the_job(setup: tuple[Database, FileBlobStore, str, str]) -> None:
    db, store, source, _ = setup
    job_id = _job(db, source, source)
    with db.transaction() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        job.target_checkpoint_id = None
        job.target = {"skeleton": {"tensors": {"w": {"shape": "nope"}}}}
    assert _runner(db, store).run_once()
    job = _get(db, job_id)
    assert (job.status, job.error_type) == ("failed", "invalid-target")


def test_a_worker_without_mlflow_leaves_mlflow_jobs_to_one_with_it(
    setup: tuple[Database, FileBlobStore, str, str],
) -> None:
    db, store, source, target = setup
    from_registry = _job(db, None, target, source_ref={"uri": "models:/resnet/3"})
    registering = _job(db, source, target, register={"registry": "mlflow", "name": "r"})
    plain = _job(db, source, target)
    runner = _runner(db, store)  # no GRAFT_MLFLOW_TRACKING_URI

    assert runner.run_once()  # the only job it can run
    assert not runner.run_once()

    assert _get(db, plain).status == "succeeded"
    assert _get(db, from_registry).status == _get(db, registering).status == "queued"
    with db.transaction() as session:
        claims = [
            JobRepository(session).claim(owner="w", now=utcnow(), lease_seconds=5, mlflow=True)
            for _ in range(3)
        ]
    taken = {lease.job_id if lease is not None else None for lease in claims}
    assert taken == {from_registry, registering, None}  # a worker with MLflow takes them
