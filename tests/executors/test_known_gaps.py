"""The last round's known gaps, closed: a registry failure after a good conversion, and
scratch space left by a killed worker."""

from __future__ import annotations

import socket
from pathlib import Path

from app.api.schemas import JobPublic
from app.config import Settings
from app.executors.local import JobRunner
from app.executors.runtime import JobRuntime
from app.sandbox.runner import Limits
from app.services.jobs.execution import JobSettings
from app.services.sources.references import RegistryConfig
from app.storage import FileBlobStore, open_store
from tests.executors.test_failover import Setup, setup  # noqa: F401 (the fixture)
from tests.executors.test_local import _get, _job


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_registry_failure_after_the_conversion_leaves_the_job_succeeded(
    setup: Setup,  # noqa: F811
) -> None:
    db, store, source, target = setup
    job_id = _job(db, source, target, register={"registry": "mlflow", "name": "out"})
    registry = RegistryConfig(
        tracking_uri=f"http://127.0.0.1:{_closed_port()}", outbound_allow="mlflow"
    )
    runtime = JobRuntime(
        db,
        store,
        JobSettings(limits=Limits(), device="cpu", registry=registry),
        lease_seconds=30,
        heartbeat_seconds=0.1,
    )
    assert JobRunner(runtime).run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok, job.error_type, job.error_message) == (
        "succeeded",
        True,
        None,
        None,
    )
    assert {a.name for a in job.artifacts} == {"manifest", "report", "report-text", "weights"}
    assert job.result is not None
    assert list(job.result) == ["registry"]
    assert list(job.result["registry"]) == ["error"]
    assert job.result["registry"]["error"]["type"] == "registry-unavailable"
    public = JobPublic.of(job).model_dump()
    assert public["result"]["registry"]["error"]["type"] == "registry-unavailable"
    assert public["result"]["registry"]["uri"] is None


def test_s3_scratch_lives_in_the_configured_folder_and_is_swept(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    settings = Settings(
        storage_url="s3://bucket/prefix",
        s3_endpoint_url="http://127.0.0.1:1",
        scratch_dir=scratch,
    )
    store = open_store(settings)
    assert store.scratch.root == scratch
    store.scratch.ensure()
    # What a Celery pool process killed mid-job leaves: <pid>-work-…/source/source.pt
    dead = scratch / "999999999-work-0123456789abcdef" / "source"
    dead.mkdir(parents=True)
    (dead / "source.pt").write_bytes(b"x" * 1024)
    with store.workdir() as live:
        assert store.scratch.cleanup_orphans() == 1
        assert live.exists()
    assert list(scratch.iterdir()) == []


def test_the_file_store_keeps_its_scratch_beside_its_blobs(tmp_path: Path) -> None:
    # Publishing is a rename: the file store's scratch must be on its own file system.
    store = open_store(Settings(storage_dir=tmp_path / "blobs", scratch_dir=tmp_path / "s"))
    assert isinstance(store, FileBlobStore)
    assert store.scratch.root == tmp_path / "blobs" / "tmp"
