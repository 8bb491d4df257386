"""The Celery task: claim the job a message names, hold it, record how it ended.

The task is idempotent. It claims the row (attempts += 1, capped by ``GRAFT_MAX_ATTEMPTS``)
with one UPDATE, so a duplicate or a redelivery of a finished job does nothing. A
redelivery whose previous holder's lease is still live (the broker noticed a dead
connection before the lease lapsed, or the holder is alive and the message was sent twice)
retries with a countdown until that lease lapses, then takes over.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]
from typing import Any

from app.config import get_settings
from app.db.base import utcnow
from app.db.repositories import JobRepository
from app.db.session import Database
from app.executors.lease import (
    Disposition,
    LeaseTiming,
    default_events,
    run_held_job,
    storage_reachable,
    sweep_lapsed,
)
from app.services.job_events import record_statuses
from app.services.job_execution import JobSettings
from app.services.limits import conversion_limits, inspection_limits
from app.services.sources.references import RegistryConfig
from app.storage import BlobStore, open_store

__all__ = ["STAGE_DELAY_ENV", "run_job"]

logger = logging.getLogger(__name__)

# TEST ONLY, as in app.worker.main: seconds to sleep at each stage so tests can act mid-job.
STAGE_DELAY_ENV = "GRAFT_TEST_STAGE_DELAY"
# A retry waits for the holder's lease to lapse, plus this margin.
_RETRY_MARGIN = 0.5


@dataclass
class _Process:
    """What one pool process opens once (after the fork: engines are not fork-safe)."""

    pid: int
    database: Database
    store: BlobStore
    owner: str
    timing: LeaseTiming
    settings: JobSettings
    stop_event: threading.Event


_process: _Process | None = None


def _resources() -> _Process:
    global _process
    if _process is None or _process.pid != os.getpid():
        _adopt_pool_process()
        settings = get_settings()
        database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
        store = open_store(settings)
        store.ensure()
        _process = _Process(
            pid=os.getpid(),
            database=database,
            store=store,
            owner=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
            timing=LeaseTiming(
                settings.lease_seconds,
                settings.heartbeat_seconds,
                float(os.environ.get(STAGE_DELAY_ENV, "0") or 0),
            ),
            settings=JobSettings(
                limits=conversion_limits(settings),
                device=settings.device,
                device_index=0,  # one GPU per worker, pinned by CUDA_VISIBLE_DEVICES
                architectures=settings.architectures,
                registry=RegistryConfig.from_settings(settings),
                inspect_limits=inspection_limits(settings),
                max_tensors=settings.max_tensors,
            ),
            stop_event=threading.Event(),
        )
    return _process


def _adopt_pool_process() -> None:
    """Let a Celery (billiard) pool process start the sandbox's children.

    Billiard marks its pool processes daemonic, and multiprocessing refuses children to a
    daemon; the sandbox starts one child per job and always reaps it itself. Billiard's
    authentication key also refuses the stdlib pickler the fork server uses: rewrap it.
    """
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    config["daemon"] = False
    config["authkey"] = AuthenticationString(bytes(config["authkey"]))


def run_job(task: Any, job_id: str) -> str:
    """The body of ``graft.run_job``: claim, hold, finish.

    Returns:
        What happened (``finished``, ``lease-lost``, ``released`` or ``gone``), for the log.
        A job that failed while the storage was unreachable is retried instead.
    """
    res = _resources()
    if not storage_reachable(res.store):
        # Claiming now would spend an attempt on a job that cannot read its inputs.
        logger.warning("job %s: the storage is unreachable; retrying later", job_id)
        raise task.retry(countdown=math.ceil(res.timing.lease_seconds + _RETRY_MARGIN))
    sweep_lapsed(res.database)
    with res.database.transaction() as session:
        claim = JobRepository(session).claim_job(
            job_id, owner=res.owner, now=utcnow(), lease_seconds=res.timing.lease_seconds
        )
        if claim.kind == "claimed":
            record_statuses(session, [job_id], default_events().render)
    if claim.kind == "busy":
        countdown = math.ceil(claim.retry_in + _RETRY_MARGIN)
        logger.info("job %s: held by a live lease; retrying in %d s", job_id, countdown)
        raise task.retry(countdown=countdown)
    if claim.kind == "gone":
        logger.info("job %s: nothing to do (finished, cancelled or out of attempts)", job_id)
        return "gone"
    logger.info("job %s claimed by %s", job_id, res.owner)
    disposition = run_held_job(
        res.database,
        res.store,
        job_id,
        owner=res.owner,
        timing=res.timing,
        settings=res.settings,
        stop_event=res.stop_event,
    )
    if disposition is Disposition.storage_down:
        # Come back once the lease this attempt leaves behind has lapsed.
        raise task.retry(countdown=math.ceil(res.timing.lease_seconds + _RETRY_MARGIN))
    return disposition.value
