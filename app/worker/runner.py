"""The local executor: claim, heartbeat, cancel, finish. The conversion is not its business.

A worker claims one job with one UPDATE, then renews its lease from a heartbeat thread while
the job-execution service (``app.services.job_execution``) runs the conversion in a sandbox
child and publishes its artifacts. Progress and stage go to the database with each
heartbeat; a cancel request or a lost lease is noticed there and stops the job at its next
progress call or tick. The job is then completed and its artifact rows written in one
transaction, and only while this worker still holds the lease, so a job completes exactly
once even if a worker thought dead comes back.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from app.db.base import utcnow
from app.db.models import Artifact, JobStatus
from app.db.repositories import ArtifactRepository, JobRepository
from app.db.session import Database
from app.sandbox.runner import Limits
from app.services.job_execution import JobOutcome, JobSettings, execute_job
from app.services.references import RegistryConfig
from app.storage import BlobStore

__all__ = ["JobRunner"]

logger = logging.getLogger(__name__)


class _Abort(BaseException):
    """Raised inside the engine's progress callback to stop the conversion."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # cancelled | lease-lost | stopping


@dataclass
class _State:
    stage: str = "preparing"
    progress: float = 0.0
    abort: str | None = None
    dirty: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


class JobRunner:
    """Runs jobs from the database until told to stop.

    Args:
        database: the shared database.
        store: the shared blob store.
        lease_seconds: how long a claim lasts without a heartbeat.
        heartbeat_seconds: how often the lease is renewed.
        poll_seconds: idle wait between claims.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (see :func:`resolve_device`).
        stage_delay: TEST ONLY (``GRAFT_TEST_STAGE_DELAY``): seconds to sleep between stages,
            so tests can kill a worker mid-job. Zero in production.
        limits: the sandbox limits of each job's conversion child (default: none).
        worker_index: this worker's number among those on the host (GPU pinning).
        architectures: more architecture targets, ``name=module:factory,...``.
        registry: the MLflow registry and outbound allow list (sources by reference, register).
        inspect_limits: sandbox limits of a fetched source's inspection.
        max_tensors: most tensors a fetched source may hold.
    """

    def __init__(
        self,
        database: Database,
        store: BlobStore,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        poll_seconds: float,
        device: str,
        stage_delay: float = 0.0,
        limits: Limits | None = None,
        worker_index: int = 0,
        architectures: str = "",
        registry: RegistryConfig | None = None,
        inspect_limits: Limits | None = None,
        max_tensors: int | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.device = device
        self.stage_delay = stage_delay
        self.limits = limits or Limits()
        self.worker_index = worker_index
        self.architectures = architectures
        self.registry = registry or RegistryConfig()
        self.inspect_limits = inspect_limits or Limits()
        self.max_tensors = max_tensors
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stop_event = threading.Event()

    # -- loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Claim and run jobs until :attr:`stop_event` is set."""
        logger.info("worker %s started (device %s)", self.owner, self.device)
        while not self.stop_event.is_set():
            try:
                worked = self.run_once()
            except Exception:
                logger.exception("worker loop error; retrying")
                worked = False
            if not worked:
                self.stop_event.wait(self.poll_seconds)
        logger.info("worker %s stopped", self.owner)

    def run_once(self) -> bool:
        """Claim one job and run it. Returns whether there was one."""
        job_id = self._claim()
        if job_id is None:
            return False
        self._execute(job_id)
        return True

    def _claim(self) -> str | None:
        now = utcnow()
        with self.database.transaction(write=False) as session:
            if not JobRepository(session).has_work(now=now):
                return None
        with self.database.transaction() as session:
            repo = JobRepository(session)
            repo.cancel_abandoned(now=now)
            failed = repo.fail_exhausted(now=now)
            if failed:
                logger.warning("failed %d job(s) that exhausted their attempts", failed)
            return repo.claim(owner=self.owner, now=now, lease_seconds=self.lease_seconds)

    # -- one job -----------------------------------------------------------------------------

    def _execute(self, job_id: str) -> None:
        state = _State()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, state, done), daemon=True)
        beat.start()
        settings = JobSettings(
            limits=self.limits,
            device=self.device,
            device_index=self.worker_index,
            architectures=self.architectures,
            registry=self.registry,
            inspect_limits=self.inspect_limits,
            max_tensors=self.max_tensors,
        )
        try:
            outcome = execute_job(
                self.database, self.store, job_id, settings=settings, control=_Control(self, state)
            )
        except _Abort as abort:
            if abort.reason == "lease-lost":
                logger.warning("job %s: lease lost; another worker owns it now", job_id)
                return
            if abort.reason == "stopping":
                self._release(job_id)
                return
            outcome = JobOutcome(status=JobStatus.cancelled)
        finally:
            done.set()
            beat.join()
        self._finish(job_id, outcome)

    def _finish(self, job_id: str, outcome: JobOutcome) -> None:
        with self.database.transaction() as session:
            held = JobRepository(session).finish(
                job_id,
                owner=self.owner,
                now=utcnow(),
                status=outcome.status,
                ok=outcome.ok,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
                device=outcome.device,
                source_id=outcome.source_id,
                result=outcome.result,
                warnings=outcome.warnings,
            )
            if not held:
                logger.warning("job %s: lease lost before completion; result discarded", job_id)
                session.rollback()
                return
            repo = ArtifactRepository(session)
            for artifact in outcome.artifacts:
                repo.add(Artifact(job_id=job_id, **artifact))
        logger.info("job %s %s", job_id, outcome.status)

    def _release(self, job_id: str) -> None:
        with self.database.transaction() as session:
            JobRepository(session).release(job_id, owner=self.owner, now=utcnow())
        logger.info("job %s released back to the queue", job_id)

    # -- heartbeat and progress --------------------------------------------------------------

    def _heartbeat(self, job_id: str, state: _State, done: threading.Event) -> None:
        while True:
            with state.lock:
                stage, progress = state.stage, state.progress
            try:
                with self.database.transaction() as session:
                    held, cancel = JobRepository(session).heartbeat(
                        job_id,
                        owner=self.owner,
                        now=utcnow(),
                        lease_seconds=self.lease_seconds,
                        stage=stage,
                        progress=progress,
                    )
            except Exception:
                logger.exception("job %s: heartbeat failed; retrying", job_id)
            else:
                with state.lock:
                    if not held:
                        state.abort = "lease-lost"
                    elif cancel:
                        state.abort = state.abort or "cancelled"
            if self.stop_event.is_set():
                with state.lock:
                    state.abort = state.abort or "stopping"
            if done.wait(min(self.heartbeat_seconds, self.lease_seconds / 3)):
                return


class _Control:
    """The job-execution service's hooks: record stage and progress, stop on an abort."""

    def __init__(self, runner: JobRunner, state: _State) -> None:
        self.runner = runner
        self.state = state

    def tick(self) -> None:
        with self.state.lock:
            abort = self.state.abort
        if abort:
            raise _Abort(abort)

    def progress(self, stage: str, fraction: float) -> None:
        with self.state.lock:
            self.state.stage = stage
            self.state.progress = round(0.05 + 0.9 * max(0.0, min(1.0, fraction)), 4)
        self.tick()

    def stage(self, name: str) -> None:
        """Mark a stage; with the test-only delay, sleep there while staying abortable."""
        with self.state.lock:
            self.state.stage = name
        deadline = time.monotonic() + self.runner.stage_delay
        while True:
            self.tick()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(0.05, remaining))
