"""The last round's known gaps, closed: a registry failure after a good conversion, and
scratch space left by a killed worker."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

from app.api.schemas import JobPublic
from app.config import Settings
from app.db.base import utcnow
from app.db.repositories import JobRepository
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
    assert {a.name for a in job.artifacts} == {
        "attestation", "manifest", "report", "report-text", "weights",
    }  # fmt: skip
    assert job.result is not None
    assert set(job.result) == {"coverage", "registry"}
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


class _Stalling(http.server.BaseHTTPRequestHandler):
    """Answers with headers for a 1 MB body, then sends nothing until released."""

    asked = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.flush()
        type(self).asked.set()
        type(self).release.wait(60)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_cancel_takes_effect_during_the_fetch(setup: Setup) -> None:  # noqa: F811
    db, store, _, target = setup
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/m.safetensors"
        job_id = _job(db, None, target, source_ref={"uri": uri})
        registry = RegistryConfig(outbound_allow="127.0.0.1:*")
        runtime = JobRuntime(
            db,
            store,
            JobSettings(limits=Limits(), device="cpu", registry=registry),
            lease_seconds=30,
            heartbeat_seconds=0.1,
        )
        runner = JobRunner(runtime)
        thread = threading.Thread(target=runner.run_once)
        thread.start()
        assert _Stalling.asked.wait(60)  # the download has begun, and stalls
        with db.transaction() as session:
            assert JobRepository(session).request_cancel(job_id, now=utcnow())
        asked = time.monotonic()
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - asked < 5  # not when the download would end
        job = _get(db, job_id)
        assert (job.status, job.source_id, job.artifacts) == ("cancelled", None, [])
    finally:
        _Stalling.release.set()
        server.shutdown()
        server.server_close()
