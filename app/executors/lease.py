"""Holding a job: heartbeat, the job-execution hooks, and finishing under the lease.

Every executor does the same once it has claimed a job (one UPDATE that sets the lease and
counts the attempt): it renews the lease from a heartbeat thread while
:func:`app.services.jobs.execution.execute_job` runs, and records stage and progress with each
beat. A cancel request or a lost lease is noticed there and stops the job at its next
progress call or tick. The job is then completed, and its artifact rows written, in one
transaction and only while this worker still holds the lease, so a job completes exactly
once even if a worker thought dead comes back.

Holding is fenced: each claim increments the job's ``lease_token``, and every write of the
holder (heartbeat, progress, release, finish) is an UPDATE that names the token it claimed
with. Once another worker has taken the job over, those writes match no row: the old holder
aborts at its next beat or progress call, and its finish is refused. That is what lets a
taker start at once when the holder is known dead, rather than wait out its lease. How the
job was claimed (the oldest claimable row, or the one a broker message named) is the
executor's business.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from dataclasses import dataclass, field

from app.db.base import utcnow
from app.db.models import Artifact, JobStatus
from app.db.repositories import ArtifactRepository, JobEnd, JobRepository, Lease
from app.db.session import Database
from app.engine.progress import ProgressEvent
from app.errors import InternalError
from app.executors.runtime import JobRuntime
from app.services.jobs.events import Progress, record_progress, record_statuses
from app.services.jobs.execution import JobOutcome, execute_job
from app.services.jobs.maintenance import finish_lapsed
from app.storage import BlobStore

__all__ = ["Disposition", "run_held_job", "storage_reachable", "sweep_lapsed"]

logger = logging.getLogger(__name__)


class Disposition(enum.StrEnum):
    """How holding a job ended."""

    finished = "finished"  # completed (succeeded, failed or cancelled) under the lease
    lease_lost = "lease-lost"  # another worker owns it now; nothing was recorded
    released = "released"  # given back to the queue (this worker is stopping)
    # Failed while the blob store was unreachable: nothing recorded, the lease left to lapse
    # so the job runs again (the attempt counts; GRAFT_MAX_ATTEMPTS bounds the retries).
    storage_down = "storage-down"


class _Abort(BaseException):
    """Raised inside the job's control hooks to stop the conversion."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # cancelled | lease-lost | stopping


@dataclass
class _State:
    stage: str = "preparing"
    progress: float = 0.0
    abort: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    last_event_at: float = 0.0
    event_stage: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def sweep_lapsed(database: Database) -> None:
    """Finish the jobs whose worker died: cancelled if a cancel was asked, failed
    (``worker-lost``) if that was their last attempt; each with its status event."""
    with database.transaction() as session:
        _, failed = finish_lapsed(session, now=utcnow())
    if failed:
        logger.warning("failed %d job(s) that exhausted their attempts", len(failed))


def run_held_job(runtime: JobRuntime, lease: Lease, *, stop_event: threading.Event) -> Disposition:
    """Run a job just claimed, keep its lease, and record how it ended.

    Args:
        runtime: the database, store, job settings and lease timing.
        lease: the claim (job, holder, fencing token).
        stop_event: set when the worker is stopping; the job is then given back.

    Returns:
        How it ended (see :class:`Disposition`).
    """
    database = runtime.database
    job_id = lease.job_id
    state = _State()
    done = threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(runtime, lease, state, done, stop_event),
        name=f"heartbeat-{job_id}",
        daemon=True,
    )
    beat.start()
    try:
        outcome = execute_job(
            database,
            runtime.store,
            job_id,
            settings=runtime.jobs,
            control=_Control(state, runtime, lease),
        )
    except _Abort as abort:
        if abort.reason == "lease-lost":
            logger.warning("job %s: lease lost; another worker owns it now", job_id)
            return Disposition.lease_lost
        if abort.reason == "stopping":
            _release(database, lease)
            return Disposition.released
        outcome = JobOutcome(status=JobStatus.cancelled)
    finally:
        done.set()
        beat.join()
    if outcome.error_type == InternalError.type and not storage_reachable(runtime.store):
        logger.warning("job %s failed while the storage is unreachable; it will run again", job_id)
        return Disposition.storage_down
    return _finish(database, lease, outcome)


def storage_reachable(store: BlobStore) -> bool:
    """Whether the blob store answers now (its readiness probe)."""
    try:
        store.check()
    except Exception:
        return False
    return True


def _finish(database: Database, lease: Lease, outcome: JobOutcome) -> Disposition:
    job_id = lease.job_id
    with database.transaction() as session:
        held = JobRepository(session).finish(
            lease,
            now=utcnow(),
            end=JobEnd(
                status=outcome.status,
                ok=outcome.ok,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
                device=outcome.device,
                source_id=outcome.source_id,
                result=outcome.result,
                warnings=outcome.warnings,
            ),
        )
        if not held:
            logger.warning("job %s: lease lost before completion; result discarded", job_id)
            session.rollback()
            return Disposition.lease_lost
        repo = ArtifactRepository(session)
        for artifact in outcome.artifacts:
            repo.add(Artifact(job_id=job_id, **artifact))
        session.flush()
        # The terminal status event, and the job's webhooks in the outbox, with the finish.
        record_statuses(session, [job_id])
    logger.info("job %s %s", job_id, outcome.status)
    return Disposition.finished


def _release(database: Database, lease: Lease) -> None:
    with database.transaction() as session:
        if JobRepository(session).release(lease, now=utcnow()):
            record_statuses(session, [lease.job_id])
    logger.info("job %s released back to the queue", lease.job_id)


def _heartbeat(
    runtime: JobRuntime,
    lease: Lease,
    state: _State,
    done: threading.Event,
    stop_event: threading.Event,
) -> None:
    while True:
        with state.lock:
            stage, progress = state.stage, state.progress
        try:
            with runtime.database.transaction() as session:
                held, cancel = JobRepository(session).heartbeat(
                    lease,
                    now=utcnow(),
                    lease_seconds=runtime.lease_seconds,
                    stage=stage,
                    progress=progress,
                )
        except Exception:
            # The database may come back before the lease lapses; if not, the finish is
            # refused and another worker runs the job again.
            logger.exception("job %s: heartbeat failed; retrying", lease.job_id)
        else:
            with state.lock:
                if not held:
                    state.abort = "lease-lost"
                elif cancel:
                    state.abort = state.abort or "cancelled"
        if stop_event.is_set():
            with state.lock:
                state.abort = state.abort or "stopping"
        if done.wait(runtime.beat):
            return


class _Control:
    """The job-execution service's hooks: record stage, progress and progress events (at each
    new stage, else at most every ``progress_event_seconds``), stop on an abort. A progress
    event is written only under the lease (its token), with the stage it records."""

    def __init__(self, state: _State, runtime: JobRuntime, lease: Lease) -> None:
        self.state = state
        self.runtime = runtime
        self.lease = lease

    def tick(self) -> None:
        with self.state.lock:
            abort = self.state.abort
        if abort:
            raise _Abort(abort)

    def progress(self, event: ProgressEvent) -> None:
        """Record the stage and fraction; the latest counts go with the next progress event."""
        with self.state.lock:
            if event.counts is not None:
                self.state.counts = dataclasses.asdict(event.counts)
            self.state.stage = event.stage
            self.state.progress = round(0.05 + 0.9 * max(0.0, min(1.0, event.fraction)), 4)
            due = self._due_event(event.stage, time.monotonic())
        self._store(due)
        self.tick()

    def stage(self, name: str) -> None:
        """Mark a stage and run the stage hooks (which call :meth:`tick` while they wait)."""
        with self.state.lock:
            self.state.stage = name
            event = self._due_event(name, time.monotonic())
        self._store(event)
        for hook in self.runtime.stage_hooks:
            hook(name, self.tick)
        self.tick()

    def _due_event(self, stage: str, now: float) -> Progress | None:
        """The progress event to store now, if one is due. Called with the state's lock held."""
        state = self.state
        if stage == state.event_stage and now - state.last_event_at < (
            self.runtime.progress_event_seconds
        ):
            return None
        state.last_event_at, state.event_stage = now, stage
        return Progress(stage=stage, progress=state.progress, **state.counts)

    def _store(self, event: Progress | None) -> None:
        if event is None:
            return
        # Best effort: a lost progress event is harmless, a job failed because of one is not.
        try:
            with self.runtime.database.transaction() as session:
                held, _ = JobRepository(session).heartbeat(
                    self.lease,
                    now=utcnow(),
                    lease_seconds=self.runtime.lease_seconds,
                    stage=event.stage,
                    progress=event.progress,
                )
                if held:
                    record_progress(session, self.lease.job_id, event)
        except Exception:
            logger.exception("job %s: could not record a progress event", self.lease.job_id)
            return
        if not held:
            with self.state.lock:
                self.state.abort = "lease-lost"
