"""The local executor: claim, heartbeat, cancel, finish. The conversion is not its business.

A worker claims one job with one UPDATE, then renews its lease from a heartbeat thread while
the job-execution service (``app.services.job_execution``) runs the conversion in a sandbox
child and publishes its artifacts. Progress and stage go to the database with each
heartbeat; a cancel request or a lost lease is noticed there and stops the job at its next
progress call or tick. The job is then completed and its artifact rows written in one
transaction, and only while this worker still holds the lease, so a job completes exactly
once even if a worker thought dead comes back.

Each status change is also recorded as a job event, in the transaction that makes it, and a
terminal one puts the job's webhooks in the outbox there too (``services.job_events``).
Progress events are recorded from the progress path, at most every
``progress_event_seconds``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Artifact, Job, JobStatus
from app.db.repositories import ArtifactRepository, JobRepository
from app.db.session import Database
from app.sandbox.runner import Limits
from app.services.job_events import JobRenderer, Progress, record_progress, record_status
from app.services.job_execution import JobOutcome, JobSettings, execute_job
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
    counts: dict[str, int] = field(default_factory=dict)
    last_event_at: float = 0.0
    event_stage: str = ""
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
        render: builds a job's public document, for its status events and webhooks
            (default: the API's ``JobPublic``).
        progress_event_seconds: least time between two stored progress events of a job.
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
        render: JobRenderer | None = None,
        progress_event_seconds: float = 0.5,
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
        self.render = render or _api_document
        self.progress_event_seconds = progress_event_seconds
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
            cancelled = repo.cancel_abandoned(now=now)
            failed = repo.fail_exhausted(now=now)
            if failed:
                logger.warning("failed %d job(s) that exhausted their attempts", len(failed))
            claimed = repo.claim(owner=self.owner, now=now, lease_seconds=self.lease_seconds)
            for job_id in [*cancelled, *failed, *([claimed] if claimed else [])]:
                self._record_status(session, job_id)
            return claimed

    def _record_status(self, session: Session, job_id: str) -> None:
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None:
            record_status(session, job, self.render)

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
        )
        try:
            outcome = execute_job(
                self.database,
                self.store,
                job_id,
                settings=settings,
                control=_Control(self, state, job_id),
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
            )
            if not held:
                logger.warning("job %s: lease lost before completion; result discarded", job_id)
                session.rollback()
                return
            repo = ArtifactRepository(session)
            for artifact in outcome.artifacts:
                repo.add(Artifact(job_id=job_id, **artifact))
            self._record_status(session, job_id)
        logger.info("job %s %s", job_id, outcome.status)

    def _release(self, job_id: str) -> None:
        with self.database.transaction() as session:
            if JobRepository(session).release(job_id, owner=self.owner, now=utcnow()):
                self._record_status(session, job_id)
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


def _api_document(job: Job) -> dict[str, Any]:
    # The job's document is the API's JobPublic: the same bytes GET /v1/jobs/{id} answers.
    from app.api.schemas import job_document

    return job_document(job)


class _Control:
    """The job-execution service's hooks: record stage and progress, stop on an abort."""

    def __init__(self, runner: JobRunner, state: _State, job_id: str) -> None:
        self.runner = runner
        self.state = state
        self.job_id = job_id

    def tick(self) -> None:
        with self.state.lock:
            abort = self.state.abort
        if abort:
            raise _Abort(abort)

    def progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        with self.state.lock:
            self.state.stage = stage
            self.state.progress = round(0.05 + 0.9 * max(0.0, min(1.0, fraction)), 4)
            event = self._due_event(stage, now)
        if event is not None:
            self._store(event)
        self.tick()

    def _due_event(self, stage: str, now: float) -> Progress | None:
        """A progress event to store: at each new stage, else at most every
        ``progress_event_seconds``. Called with the state's lock held."""
        state = self.state
        changed = stage != state.event_stage
        if not changed and now - state.last_event_at < self.runner.progress_event_seconds:
            return None
        state.last_event_at, state.event_stage = now, stage
        return Progress(stage=stage, progress=state.progress, **state.counts)

    def counts(self, *, tensors_done: int, tensors_total: int, bytes_done: int) -> None:
        """The latest counts, sent with the next progress event."""
        with self.state.lock:
            self.state.counts = {
                "tensors_done": tensors_done,
                "tensors_total": tensors_total,
                "bytes_done": bytes_done,
            }

    def _store(self, event: Progress) -> None:
        # Best effort: a lost progress event is harmless, a failed job because of one is not.
        try:
            with self.runner.database.transaction() as session:
                record_progress(session, self.job_id, event)
        except Exception:
            logger.exception("job %s: could not record a progress event", self.job_id)

    def stage(self, name: str) -> None:
        """Mark a stage; with the test-only delay, sleep there while staying abortable."""
        with self.state.lock:
            self.state.stage = name
            event = self._due_event(name, time.monotonic())
        if event is not None:
            self._store(event)
        deadline = time.monotonic() + self.runner.stage_delay
        while True:
            self.tick()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(0.05, remaining))
