"""The local executor: worker processes that claim the oldest claimable job from the database.

A worker claims one job with one UPDATE (``JobRepository.claim``: queued, or running with a
lapsed lease and attempts left), then holds it with :func:`app.executors.lease.run_held_job`
(heartbeat, cancel, finish under the lease), which the Celery executor shares. The conversion
is the job-execution service's business.

Each status change is also recorded as a job event, in the transaction that makes it, and a
terminal one puts the job's webhooks in the outbox there too (``services.jobs.events``).

:func:`run_worker` is one worker process (``graft worker``, ``python -m app.worker``);
:class:`WorkerPool` keeps the ones ``graft serve`` embeds alive.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from app.config import Settings, get_settings
from app.db.base import utcnow
from app.db.models import Worker
from app.db.repositories import JobRepository, Lease, WorkerRepository
from app.executors.lease import run_held_job, sweep_lapsed
from app.executors.pool import WorkerPool
from app.executors.reaper import expire_dead_holders
from app.executors.registration import (
    claim_registration,
    has_registration,
    run_held_registration,
)
from app.executors.runtime import JobRuntime, worker_owner
from app.services.conversion import warm_up
from app.services.jobs.events import record_statuses
from app.services.jobs.maintenance import fail_device_waits
from app.services.warmth import mark_warm, markers_dir

__all__ = ["JobRunner", "WorkerPool", "run_worker", "wait_for_gate"]

logger = logging.getLogger(__name__)


class JobRunner:
    """Runs jobs from the database until told to stop.

    It records itself in ``workers`` under its lease-holder name (queues and devices, so
    ``auto`` routing and the ``cuda`` deadline know a GPU worker is alive) and beats there;
    before each claim it ends the leases of dead holders (:mod:`app.executors.reaper`). A
    worker without CUDA never claims a job that asked for ``cuda``.

    Args:
        runtime: the database, store, job settings and lease timing.
    """

    def __init__(self, runtime: JobRuntime, *, cuda: bool | None = None) -> None:
        self.runtime = runtime
        self.owner = worker_owner()
        self.stop_event = threading.Event()
        # Known from the warm-up child (run_worker), else asked here.
        self.cuda = runtime.has_cuda() if cuda is None else cuda and runtime.jobs.device != "cpu"
        # None: every job; without CUDA, not the ones that asked for it.
        self.devices: tuple[str, ...] | None = None if self.cuda else ("auto", "cpu")

    def run(self) -> None:
        """Claim and run jobs until :attr:`stop_event` is set."""
        logger.info("worker %s started (device %s)", self.owner, self.runtime.jobs.device)
        self.record()
        beat = threading.Thread(target=self._beat, name="worker-beat", daemon=True)
        beat.start()
        try:
            while not self.stop_event.is_set():
                try:
                    worked = self.run_once()
                except Exception:
                    logger.exception("worker loop error; retrying")
                    worked = False
                if not worked:
                    self.stop_event.wait(self.runtime.poll_seconds)
        finally:
            self.stop_event.set()
            beat.join()
            self.forget()
        logger.info("worker %s stopped", self.owner)

    def record(self) -> None:
        """Record this worker in ``workers`` (or refresh its row)."""
        now = utcnow()
        worker = Worker(
            id=self.owner,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            executor="local",
            queues=["gpu", "cpu"] if self.cuda else ["cpu"],
            devices=["cuda", "cpu"] if self.cuda else ["cpu"],
            started_at=now,
            heartbeat_at=now,
        )
        with self.runtime.database.transaction() as session:
            WorkerRepository(session).record(worker)

    def forget(self) -> None:
        """Remove this worker's row (a clean stop)."""
        with self.runtime.database.transaction() as session:
            WorkerRepository(session).remove(self.owner)

    def _beat(self) -> None:
        while not self.stop_event.wait(self.runtime.beat):
            try:
                with self.runtime.database.transaction() as session:
                    beating = WorkerRepository(session).beat(self.owner, now=utcnow())
                if not beating:
                    self.record()  # pruned while this worker was away: come back
            except Exception:
                logger.exception("worker %s: heartbeat failed; retrying", self.owner)

    def run_once(self) -> bool:
        """Claim one job and run it. Returns whether there was one."""
        lease = self._claim()
        if lease is None:
            return self._run_registration()
        run_held_job(self.runtime, lease, stop_event=self.stop_event)
        return True

    def _run_registration(self) -> bool:
        """With no job to run, a waiting registration retry (only with a registry)."""
        if not self.runtime.jobs.registry.tracking_uri or not has_registration(self.runtime):
            return False
        lease = claim_registration(self.runtime, self.owner)
        if lease is None:
            return False
        run_held_registration(self.runtime, lease, stop_event=self.stop_event)
        return True

    def _claim(self) -> Lease | None:
        database = self.runtime.database
        expire_dead_holders(database, beat_seconds=self.runtime.beat)
        if not self.cuda:
            fail_device_waits(database, wait_seconds=self.runtime.device_wait_seconds)
        # Only jobs this worker can run: one without a registry leaves MLflow jobs to others.
        mlflow = bool(self.runtime.jobs.registry.tracking_uri)
        with database.transaction(write=False) as session:
            if not JobRepository(session).has_work(
                now=utcnow(), devices=self.devices, mlflow=mlflow
            ):
                return None
        sweep_lapsed(database)
        with database.transaction() as session:
            claimed = JobRepository(session).claim(
                owner=self.owner,
                now=utcnow(),
                lease_seconds=self.runtime.lease_seconds,
                devices=self.devices,
                mlflow=mlflow,
            )
            if claimed is not None:
                record_statuses(session, [claimed.job_id])
            return claimed


def run_worker(
    settings: Settings | None = None,
    *,
    watch_parent: bool = False,
    index: int = 0,
    gate: Path | None = None,
) -> None:
    """Run jobs until SIGTERM/SIGINT (or, embedded, until the parent process goes away).

    Args:
        settings: default :func:`get_settings`.
        watch_parent: stop when the parent process (``graft serve``) goes away.
        index: this worker's number on the host: with several GPUs, worker ``i`` uses GPU
            ``i % count`` (unless ``GRAFT_DEVICE`` names one).
        gate: a file to wait for, after warming up and before touching the database
            (``graft serve`` writes it once the schema is migrated).
    """
    settings = settings or get_settings()
    # Not niced itself: this process holds the database's write lock for its claims,
    # heartbeats and results, and a niced lock holder on a busy host stalls every other
    # writer (the API's included). Its conversion children are niced (GRAFT_WORKER_NICE).
    runtime = JobRuntime.from_settings(settings, device_index=index)
    # A worker that replaces a killed one collects the temp files its predecessor left.
    runtime.store.cleanup_orphans()
    parent = os.getppid()
    # Warm before the first claim: the fork server imports torch once, here, not in job one
    # (app.worker started it before importing this module, so the two overlap).
    warmth = warm_up()
    runner = JobRunner(runtime, cuda=warmth.cuda)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("worker %s: signal %d, stopping", runner.owner, signum)
        runner.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if watch_parent:
        threading.Thread(target=_watch_parent, args=(runner, parent), daemon=True).start()
    if gate is not None and not gate.exists():
        logger.info("worker %s: warm; waiting for the schema (%s)", runner.owner, gate.name)
        wait_for_gate(gate, runner.stop_event)
    if runner.stop_event.is_set():  # stopped before the schema was ready: touch nothing
        return
    mark_warm(markers_dir(settings.storage_dir))
    logger.info("worker %s: warm in %.1f s", runner.owner, warmth.seconds)
    try:
        runner.run()
    finally:
        runtime.database.dispose()


def _watch_parent(runner: JobRunner, parent: int) -> None:
    while not runner.stop_event.wait(1.0):
        if os.getppid() != parent:
            logger.warning("worker %s: parent exited, stopping", runner.owner)
            runner.stop_event.set()


def wait_for_gate(gate: Path, stop: threading.Event, *, poll: float = 0.02) -> None:
    """Wait until ``gate`` exists (or the worker is told to stop)."""
    while not gate.exists() and not stop.wait(poll):
        pass
