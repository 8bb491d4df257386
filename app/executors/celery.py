"""The Celery executor: the app and its queues, the API's dispatcher, the job task, and
``graft worker --executor celery``.

Messages carry only a job id; the database row is the truth. The settings are the ones
that make a crash safe on RabbitMQ: a message is acknowledged only after the task returns
(``task_acks_late``), a worker process that dies mid-task gives its message back
(``task_reject_on_worker_lost``), and a worker holds one message at a time
(``worker_prefetch_multiplier=1``) so a redelivery is never stuck behind a long job.
Queue and exchange names carry ``GRAFT_QUEUE_PREFIX`` so that deployments (and test runs)
sharing a broker never see each other's jobs.

The task is idempotent. It claims the row (attempts += 1, capped by ``GRAFT_MAX_ATTEMPTS``,
and a new fencing token) with one UPDATE, so a duplicate or a redelivery of a finished job
does nothing. A job still running under a live lease is taken over at once when its message
was *redelivered*: RabbitMQ hands a message back only when the consumer that had it is gone
(its connection or channel closed) or rejected it because its pool process died
(``task_reject_on_worker_lost``), so the previous holder is dead or cut off. It is also taken
over at once when its holder is known dead (same host and its process gone, see
:mod:`app.executors.reaper`). Either way the fencing token makes a holder that was only
cut off abort at its next heartbeat, its finish refused. Any other duplicate (a resend, a
retry) waits, with a countdown, until the live holder's lease lapses. It then holds the job
with :func:`app.executors.lease.run_held_job`, as the local executor does.

A worker that consumes ``gpu`` must have CUDA: it refuses to start otherwise, so a job that
asked for ``cuda`` never runs on a CPU.

A worker records itself in the ``workers`` table (queues, devices, heartbeat), so the API
can route ``auto`` jobs to ``gpu`` only while a GPU worker is alive. It runs one pool
process (one job at a time: one process per GPU), with Celery's hard time limit.
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

from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy.engine import make_url

from app.config import Settings, get_settings
from app.db.base import utcnow
from app.db.models import Worker
from app.db.repositories import JobRepository, WorkerRepository
from app.db.session import Database
from app.errors import GraftError
from app.executors.lease import Disposition, run_held_job, storage_reachable, sweep_lapsed
from app.executors.reaper import expire_dead_holders
from app.executors.registration import claim_registration, run_held_registration
from app.executors.runtime import JobRuntime, worker_owner
from app.services.jobs.events import record_statuses
from app.storage import open_store

__all__ = [
    "QUEUES",
    "CeleryDispatcher",
    "ExecutorConfigError",
    "check_celery_settings",
    "make_celery",
    "parse_queues",
    "queue_name",
    "run_celery_worker",
    "run_job",
]

logger = logging.getLogger(__name__)

QUEUES = ("gpu", "cpu")
TASK_NAME = "graft.run_job"
_VISIBILITY_MARGIN = 600  # seconds beyond the hard time limit
# A retry waits for the holder's lease to lapse, plus this margin.
_RETRY_MARGIN = 0.5
_BEAT_SECONDS = 15.0  # well inside the one-minute window `auto` routing looks at


def queue_name(prefix: str, queue: str) -> str:
    """The broker's name of queue ``gpu`` or ``cpu`` under ``prefix``."""
    return f"{prefix}.{queue}"


def make_celery(settings: Settings, *, with_task: bool = False) -> Celery:
    """A Celery app for ``settings.broker_url``.

    Args:
        settings: broker URL, queue prefix, time limit.
        with_task: register the job task (workers), whose pool processes run jobs with
            ``settings``; the API only sends by name.
    """
    if not settings.broker_url:
        raise ValueError("GRAFT_EXECUTOR=celery needs GRAFT_BROKER_URL (e.g. amqp://...)")
    prefix = settings.queue_prefix
    exchange = Exchange(f"{prefix}.jobs", type="direct", durable=True)
    celery = Celery("graft", broker=settings.broker_url, set_as_current=False)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        task_queues=[
            Queue(queue_name(prefix, q), exchange, routing_key=q, durable=True) for q in QUEUES
        ],
        task_default_queue=queue_name(prefix, "cpu"),
        task_default_exchange=exchange.name,
        task_default_routing_key="cpu",
        task_create_missing_queues=False,
        # Broadcasts (revoke) and events get their own names too: test runs stay apart.
        control_exchange=f"{prefix}.control",
        event_exchange=f"{prefix}.events",
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacknowledged message after visibility_timeout, running or
        # not: keep it above the longest a job may run (the hard time limit).
        celery.conf.broker_transport_options = {
            "visibility_timeout": settings.task_time_limit_seconds + _VISIBILITY_MARGIN
        }
    if with_task:
        # The pool processes build their runtime from these settings (see _resources).
        celery.conf.update(graft_settings=settings)
        celery.task(name=TASK_NAME, bind=True, max_retries=None)(run_job)
    return celery


class CeleryDispatcher:
    """Sends job ids to the Celery queues (the API side). The task id is the job id, so a
    revoke names the job and every delivery of one job is the same task."""

    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.queue_prefix
        self.celery = make_celery(settings)

    def send(self, job_id: str, queue: str) -> None:
        self.celery.send_task(
            TASK_NAME,
            args=[job_id],
            task_id=job_id,
            queue=queue_name(self.prefix, queue),
            routing_key=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def revoke(self, job_id: str) -> None:
        self.celery.control.revoke(job_id, terminate=True, signal="SIGTERM")

    def ping(self) -> None:
        """Raise unless the broker accepts a connection (readiness)."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def close(self) -> None:
        self.celery.close()


# --- the task (in each pool process) ---


@dataclass
class _Process:
    """What one pool process opens once (after the fork: engines are not fork-safe)."""

    pid: int
    runtime: JobRuntime
    owner: str
    stop_event: threading.Event


_process: _Process | None = None


def _resources(task: Any) -> _Process:
    global _process
    if _process is None or _process.pid != os.getpid():
        _adopt_pool_process()
        # The worker's settings, with its pinned device (one GPU per worker, device_index 0).
        settings: Settings = task.app.conf.get("graft_settings") or get_settings()
        _process = _Process(
            pid=os.getpid(),
            runtime=JobRuntime.from_settings(settings),
            owner=worker_owner(),
            stop_event=threading.Event(),
        )
        # A pool process that replaces one killed mid-job (OOM, kill -9) collects the scratch
        # copy its predecessor left; the worker's own start-up sweep ran long before.
        _process.runtime.store.scratch.cleanup_orphans()
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
    res = _resources(task)
    runtime = res.runtime
    if not storage_reachable(runtime.store):
        # Claiming now would spend an attempt on a job that cannot read its inputs.
        logger.warning("job %s: the storage is unreachable; retrying later", job_id)
        raise task.retry(countdown=math.ceil(runtime.lease_seconds + _RETRY_MARGIN))
    expire_dead_holders(runtime.database, beat_seconds=runtime.beat)
    sweep_lapsed(runtime.database)
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    with runtime.database.transaction() as session:
        claim = JobRepository(session).claim_job(
            job_id,
            owner=res.owner,
            now=utcnow(),
            lease_seconds=runtime.lease_seconds,
            take_over=redelivered,
        )
        if claim.kind == "claimed":
            record_statuses(session, [job_id])
    if claim.kind == "busy":
        countdown = math.ceil(claim.retry_in + _RETRY_MARGIN)
        logger.info("job %s: held by a live lease; retrying in %d s", job_id, countdown)
        raise task.retry(countdown=countdown)
    if claim.kind == "gone":
        # A succeeded job's id comes again when its registration retry is asked.
        retry = claim_registration(runtime, res.owner, job_id)
        if retry is not None:
            return run_held_registration(runtime, retry, stop_event=res.stop_event)
        logger.info("job %s: nothing to do (finished, cancelled or out of attempts)", job_id)
        return "gone"
    assert claim.lease is not None
    logger.info("job %s claimed by %s (redelivered: %s)", job_id, res.owner, redelivered)
    disposition = run_held_job(runtime, claim.lease, stop_event=res.stop_event)
    if disposition is Disposition.storage_down:
        # Come back once the lease this attempt leaves behind has lapsed.
        raise task.retry(countdown=math.ceil(runtime.lease_seconds + _RETRY_MARGIN))
    return disposition.value


# --- the worker process ---


class ExecutorConfigError(GraftError):
    """The configuration cannot run this executor; the message says what to set."""

    type = "executor-misconfigured"
    status = 500


def check_celery_settings(settings: Settings) -> None:
    """Refuse what cannot work across hosts: no broker, or a SQLite database.

    Raises:
        ExecutorConfigError: naming the variable to set.
    """
    if not settings.broker_url:
        raise ExecutorConfigError(
            "the celery executor needs GRAFT_BROKER_URL, e.g. amqp://guest:guest@127.0.0.1:5672//"
        )
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        raise ExecutorConfigError(
            "the celery executor needs a database every host can reach: GRAFT_DATABASE_URL is "
            "SQLite; use PostgreSQL (postgresql+psycopg://user@host/graft)"
        )


def parse_queues(text: str) -> list[str]:
    """``"gpu,cpu"`` -> ``["gpu", "cpu"]``; anything but gpu and cpu is refused."""
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        raise ExecutorConfigError(f"--queues takes gpu and/or cpu, comma-separated; got {text!r}")
    return list(dict.fromkeys(queues))


def pin_device(device: str | None, settings: Settings) -> str:
    """Pin this worker to one GPU before torch starts: ``cuda:N`` sets CUDA_VISIBLE_DEVICES=N
    (for this process and the sandbox children), after which it is ``cuda``. Returns the
    device jobs run on."""
    device = device or settings.device
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    return device


def _devices(device: str, queues: list[str]) -> list[str]:
    """The devices this worker offers; refuses ``gpu`` (or ``--device cuda``) without CUDA."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        return [f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES', '0')}", "cpu"]
    if device.startswith("cuda"):
        raise ExecutorConfigError("--device cuda: torch sees no CUDA device on this host")
    if "gpu" in queues:
        why = "--device cpu" if device == "cpu" else "torch sees no CUDA device on this host"
        raise ExecutorConfigError(
            f"--queues gpu needs a CUDA device ({why}); consume cpu only: --queues cpu"
        )
    return ["cpu"]


def run_celery_worker(settings: Settings, *, queues: list[str] | None, device: str | None) -> None:
    """Consume ``queues`` until stopped (SIGTERM: finish the running job, then exit).

    Args:
        settings: broker, database, storage, limits.
        queues: ``gpu`` and/or ``cpu``; None: both with CUDA, else ``cpu``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default ``GRAFT_DEVICE``.

    Raises:
        ExecutorConfigError: no broker, SQLite, or no CUDA device for ``--device cuda``
            or ``--queues gpu``.
    """
    device = pin_device(device, settings)
    devices = _devices(device, queues or [])
    if queues is None:
        queues = ["gpu", "cpu"] if devices[0].startswith("cuda") else ["cpu"]
    check_celery_settings(settings)
    database = Database(settings.database_url)
    store = open_store(settings)
    store.ensure()
    store.cleanup_orphans()
    node = f"graft-{secrets.token_hex(3)}@{socket.gethostname()}"
    worker = Worker(
        id=f"{node}:{os.getpid()}",
        hostname=socket.gethostname(),
        pid=os.getpid(),
        executor="celery",
        queues=queues,
        devices=devices,
        started_at=utcnow(),
        heartbeat_at=utcnow(),
    )
    with database.transaction() as session:
        WorkerRepository(session).record(worker)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(database, worker, stop), daemon=True)
    beat.start()
    celery = make_celery(settings.model_copy(update={"device": device}), with_task=True)
    argv = [
        "worker",
        "--loglevel=INFO",
        "--pool=prefork",
        "--concurrency=1",
        f"--queues={','.join(queue_name(settings.queue_prefix, q) for q in queues)}",
        f"--hostname={node}",
        "--without-gossip",
        "--without-mingle",
    ]
    logger.info("celery worker %s: queues %s, devices %s", node, queues, devices)
    try:
        celery.worker_main(argv)
    finally:
        stop.set()
        beat.join()
        with database.transaction() as session:
            WorkerRepository(session).remove(worker.id)
        database.dispose()


def _beat(database: Database, worker: Worker, stop: threading.Event) -> None:
    while not stop.wait(_BEAT_SECONDS):
        try:
            with database.transaction() as session:
                repo = WorkerRepository(session)
                if not repo.beat(worker.id, now=utcnow()):
                    repo.record(worker)  # pruned while the database was away: come back
        except Exception:
            logger.exception("worker %s: heartbeat failed; retrying", worker.id)
