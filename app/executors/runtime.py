"""What every executor runs jobs with: one value, built once from the settings.

The local workers (:mod:`app.executors.local`) and the Celery pool processes
(:mod:`app.executors.celery`) both hold a :class:`JobRuntime`: the database, the blob
store, what each job's conversion needs (:class:`JobSettings`), and the lease timing.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from app.config import Settings
from app.db.session import Database
from app.executors.hooks import StageHook, installed_stage_hooks
from app.services.jobs.execution import JobSettings
from app.services.limits import conversion_limits, inspection_limits
from app.services.sources.references import RegistryConfig
from app.storage import BlobStore, open_store

__all__ = ["JobRuntime", "worker_owner"]


def worker_owner() -> str:
    """A lease holder's name, unique per worker: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class JobRuntime:
    """What an executor runs jobs with.

    Attributes:
        database: the shared database.
        store: the shared blob store.
        jobs: each job's sandbox limits, device, architectures and registry.
        lease_seconds: how long a claim lasts without a heartbeat.
        heartbeat_seconds: how often the lease is renewed (at most a third of the lease).
        poll_seconds: a local worker's idle wait between claims.
        progress_event_seconds: least time between two stored progress events of a job.
        stage_hooks: run at each stage of each job (see :mod:`app.executors.hooks`).
        device_wait_seconds: how long a ``cuda`` job waits for a GPU worker, then fails.
    """

    database: Database
    store: BlobStore
    jobs: JobSettings
    lease_seconds: float
    heartbeat_seconds: float
    poll_seconds: float = 0.5
    progress_event_seconds: float = 0.5
    stage_hooks: tuple[StageHook, ...] = ()
    device_wait_seconds: float = 300.0

    def has_cuda(self) -> bool:
        """Whether this worker's jobs can run on a GPU (its device is not ``cpu`` and torch
        sees one)."""
        if self.jobs.device == "cpu":
            return False
        import torch

        return bool(torch.cuda.is_available())

    @property
    def beat(self) -> float:
        """The heartbeat period actually used."""
        return min(self.heartbeat_seconds, self.lease_seconds / 3)

    @classmethod
    def from_settings(cls, settings: Settings, *, device_index: int = 0) -> JobRuntime:
        """Open the database and the blob store of ``settings``, with the hooks installed.

        Args:
            settings: database, storage, limits, device, lease timing.
            device_index: this worker's number on its host (worker ``i`` uses GPU
                ``i % count`` unless the device names one).
        """
        store = open_store(settings)
        store.ensure()
        return cls(
            database=Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms),
            store=store,
            jobs=JobSettings(
                limits=conversion_limits(settings),
                device=settings.device,
                device_index=device_index,
                architectures=settings.architectures,
                registry=RegistryConfig.from_settings(settings),
                inspect_limits=inspection_limits(settings),
                max_tensors=settings.max_tensors,
                signing_key=settings.signing_key_pem(),
                stream=settings.s3_stream,
            ),
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds,
            stage_hooks=installed_stage_hooks(),
            device_wait_seconds=settings.device_wait_seconds,
        )
