"""The local executor: workers claim the oldest claimable job from the database.

A worker claims one job with one UPDATE (``JobRepository.claim``: queued, or running with a
lapsed lease and attempts left), then holds it with :func:`app.executors.lease.run_held_job`
(heartbeat, cancel, finish under the lease), which the Celery executor shares. The conversion
is the job-execution service's business.

Each status change is also recorded as a job event, in the transaction that makes it, and a
terminal one puts the job's webhooks in the outbox there too (``services.job_events``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from app.db.base import utcnow
from app.db.repositories import JobRepository
from app.db.session import Database
from app.engine.architectures import ArchitectureRef
from app.executors.lease import LeaseTiming, default_events, run_held_job, sweep_lapsed
from app.sandbox.runner import Limits
from app.services.job_events import JobEventsConfig, JobRenderer, record_statuses
from app.services.job_execution import JobSettings
from app.services.sources.references import RegistryConfig
from app.storage import BlobStore

__all__ = ["JobRunner"]

logger = logging.getLogger(__name__)


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
        architectures: more architecture targets, (name, module, factory) triples.
        registry: the MLflow registry and outbound allow list (sources by reference, register).
        inspect_limits: sandbox limits of a fetched source's inspection.
        max_tensors: most tensors a fetched source may hold.
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
        architectures: tuple[ArchitectureRef, ...] = (),
        registry: RegistryConfig | None = None,
        inspect_limits: Limits | None = None,
        max_tensors: int | None = None,
        render: JobRenderer | None = None,
        progress_event_seconds: float = 0.5,
    ) -> None:
        self.database = database
        self.store = store
        self.timing = LeaseTiming(lease_seconds, heartbeat_seconds, stage_delay)
        self.poll_seconds = poll_seconds
        self.device = device
        self.settings = JobSettings(
            limits=limits or Limits(),
            device=device,
            device_index=worker_index,
            architectures=architectures,
            registry=registry or RegistryConfig(),
            inspect_limits=inspect_limits or Limits(),
            max_tensors=max_tensors,
        )
        self.events = JobEventsConfig(
            render=render or default_events().render,
            progress_event_seconds=progress_event_seconds,
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stop_event = threading.Event()

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
        run_held_job(
            self.database,
            self.store,
            job_id,
            owner=self.owner,
            timing=self.timing,
            settings=self.settings,
            stop_event=self.stop_event,
            events=self.events,
        )
        return True

    def _claim(self) -> str | None:
        now = utcnow()
        with self.database.transaction(write=False) as session:
            if not JobRepository(session).has_work(now=now):
                return None
        sweep_lapsed(self.database, self.events)
        with self.database.transaction() as session:
            repo = JobRepository(session)
            claimed = repo.claim(
                owner=self.owner, now=utcnow(), lease_seconds=self.timing.lease_seconds
            )
            if claimed is not None:
                record_statuses(session, [claimed], self.events.render)
            return claimed
