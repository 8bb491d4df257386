"""A registration retry (``POST /v1/jobs/{id}/registry-retry``) in a real worker, against a
real ``mlflow server``: the registry refuses the first registration (nothing listens where the
worker looks), the retry registers exactly one version, and asking again never makes another."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from app.db.base import utcnow
from app.db.repositories import JobRepository, RegistrationRepository
from app.db.session import Database
from app.executors.local import JobRunner
from app.executors.registration import claim_registration, run_held_registration
from app.executors.runtime import JobRuntime
from app.net.outbound import OutboundPolicy
from app.registry.mlflow import MlflowClient, ModelVersion
from app.sandbox.runner import Limits
from app.services.errors import ConflictError
from app.services.jobs import service
from app.services.jobs.execution import JobSettings
from app.services.jobs.registry_retry import RetryState, request_registry_retry
from app.services.sources.references import RegistryConfig
from app.storage import FileBlobStore
from tests.executors.test_failover import Setup, setup  # noqa: F401 (the fixture)
from tests.executors.test_local import _get, _job
from tests.mlflowserver import running_mlflow

MODEL = "retried"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runtime(db: Database, store: FileBlobStore, tracking_uri: str) -> JobRuntime:
    registry = RegistryConfig(tracking_uri=tracking_uri, outbound_allow="127.0.0.1:*")
    return JobRuntime(
        db,
        store,
        JobSettings(limits=Limits(), device="cpu", registry=registry),
        lease_seconds=30,
        heartbeat_seconds=0.1,
        poll_seconds=0.05,
    )


def _ask(db: Database, job_id: str) -> RetryState:
    with db.transaction() as session:
        return request_registry_retry(session, job_id, owner=None).state


def _versions(url: str, job_id: str) -> list[str]:
    with MlflowClient(url, policy=OutboundPolicy.from_setting("127.0.0.1:*")) as client:
        body = client.call("GET", "model-versions/search", params={"filter": f"name='{MODEL}'"})
    found = [ModelVersion.from_json(v) for v in body.get("model_versions", [])]
    return [v.version for v in found if v.tags.get("graft.job_id") == job_id]


def _failed_registration(db: Database, store: FileBlobStore, source: str, target: str) -> str:
    job_id = _job(db, source, target, register={"registry": "mlflow", "name": MODEL})
    down = _runtime(db, store, f"http://127.0.0.1:{_closed_port()}")
    assert JobRunner(down).run_once()
    job = _get(db, job_id)
    assert job.status == "succeeded"
    assert job.result is not None
    assert job.result["registry"]["error"]["type"] == "registry-unavailable"
    return job_id


def test_a_retry_registers_once_and_is_safe_to_repeat(
    setup: Setup,  # noqa: F811
    mlflow_url: str,
) -> None:
    db, store, source, target = setup
    job_id = _failed_registration(db, store, source, target)
    assert _versions(mlflow_url, job_id) == []

    # Asked twice before a worker takes it: one retry waits.
    assert _ask(db, job_id) is RetryState.queued
    assert _ask(db, job_id) is RetryState.in_flight
    assert _get(db, job_id).stage == "registry-retry"
    # A worker without a registry leaves it; one with the registry runs it.
    up = _runtime(db, store, mlflow_url)
    assert JobRunner(up).run_once()
    job = _get(db, job_id)
    assert (job.status, job.stage, job.ok) == ("succeeded", None, True)
    assert job.result is not None
    assert job.result["registry"] == {"uri": f"models:/{MODEL}/1", "version": "1"}
    assert job.result["coverage"]  # the rest of the result is kept
    assert _versions(mlflow_url, job_id) == ["1"]

    # Registered: asking again answers the job as it is, and no worker has anything to do.
    assert _ask(db, job_id) is RetryState.registered
    assert not JobRunner(up).run_once()

    # A registration that went through but was not recorded (the worker died before its
    # write): the retry finds the version by its graft.job_id tag, never a second one.
    with db.transaction() as session:
        row = JobRepository(session).get(job_id)
        assert row is not None
        row.result = {**(row.result or {}), "registry": {"error": {"type": "x", "message": "x"}}}
    assert _ask(db, job_id) is RetryState.queued
    assert JobRunner(up).run_once()
    assert _get(db, job_id).result["registry"]["version"] == "1"  # type: ignore[index]
    assert _versions(mlflow_url, job_id) == ["1"]


def test_a_retry_refused_for_a_job_that_is_not_a_failed_registration(
    setup: Setup,  # noqa: F811
) -> None:
    db, _store, source, target = setup
    plain = _job(db, source, target)  # registers nothing
    queued = _job(db, source, target, register={"registry": "mlflow", "name": MODEL})
    for job_id, words in ((plain, "registers nothing"), (queued, "is queued")):
        with pytest.raises(ConflictError, match=words), db.transaction() as session:
            request_registry_retry(session, job_id, owner=None)
    with pytest.raises(Exception, match="no job"), db.transaction() as session:
        request_registry_retry(session, queued, owner="someone-else")


def test_a_retry_still_failing_keeps_the_error_and_can_be_asked_again(
    setup: Setup,  # noqa: F811
) -> None:
    db, store, source, target = setup
    job_id = _failed_registration(db, store, source, target)
    assert _ask(db, job_id) is RetryState.queued
    down = _runtime(db, store, f"http://127.0.0.1:{_closed_port()}")
    assert JobRunner(down).run_once()
    job = _get(db, job_id)
    assert (job.status, job.stage) == ("succeeded", None)
    assert job.result is not None
    assert job.result["registry"]["error"]["type"] == "registry-unavailable"
    assert _ask(db, job_id) is RetryState.queued


class _Silent:
    """A registry that accepts connections and never answers: a retry waits on it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.asked = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.asked.set()

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_a_cancel_stops_a_running_retry_at_once(setup: Setup) -> None:  # noqa: F811
    db, store, source, target = setup
    job_id = _failed_registration(db, store, source, target)
    silent = _Silent()
    try:
        runtime = _runtime(db, store, f"http://127.0.0.1:{silent.port}")
        assert _ask(db, job_id) is RetryState.queued
        lease = claim_registration(runtime, "w1")
        assert lease is not None
        ended: list[str] = []
        thread = threading.Thread(
            target=lambda: ended.append(
                run_held_registration(runtime, lease, stop_event=threading.Event())
            )
        )
        thread.start()
        assert silent.asked.wait(30)  # the retry is waiting on the registry
        assert _get(db, job_id).stage == "registering"
        assert _ask(db, job_id) is RetryState.in_flight
        with db.transaction() as session:
            job = service.cancel_job(session, job_id, owner=None)
            assert job.status == "succeeded"
        thread.join(10)  # the registry never answers: only the cancel ends it
        assert not thread.is_alive()
        assert ended == ["cancelled"]
        job = _get(db, job_id)
        assert (job.status, job.stage, job.cancel_requested) == ("succeeded", None, False)
        assert job.result is not None
        assert job.result["registry"]["error"]["type"] == "registry-unavailable"
        # A waiting retry is dropped by a cancel; nothing is left to claim.
        assert _ask(db, job_id) is RetryState.queued
        with db.transaction() as session:
            service.cancel_job(session, job_id, owner=None)
        with db.transaction(write=False) as session:
            assert not RegistrationRepository(session).has_work(now=utcnow())
        with pytest.raises(ConflictError), db.transaction() as session:
            service.cancel_job(session, job_id, owner=None)  # nothing in flight now
    finally:
        silent.close()
