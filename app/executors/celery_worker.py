"""``graft worker --executor celery``: one Celery worker process, one GPU (or the CPU).

The worker records itself in the ``workers`` table (queues, devices, heartbeat), so the
API can route ``auto`` jobs to ``gpu`` only while a GPU worker is alive. It runs one pool
process (one job at a time: one process per GPU), with Celery's hard time limit.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from sqlalchemy.engine import make_url

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Worker
from app.db.repositories import WorkerRepository
from app.db.session import Database
from app.errors import GraftError
from app.executors.celery_app import QUEUES, make_celery, queue_name
from app.storage import open_store

__all__ = ["ExecutorConfigError", "check_celery_settings", "parse_queues", "run_celery_worker"]

logger = logging.getLogger(__name__)

_BEAT_SECONDS = 15.0  # well inside the one-minute window `auto` routing looks at


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
    """Pin this worker to one GPU before torch starts: ``cuda:N`` sets CUDA_VISIBLE_DEVICES=N,
    after which the process sees it as ``cuda``. Returns the device jobs run on."""
    device = device or settings.device
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    os.environ["GRAFT_DEVICE"] = device  # the pool process reads its settings afresh
    return device


def _devices(device: str) -> list[str]:
    if device == "cpu":
        return ["cpu"]
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES', '0')}", "cpu"]
    if device == "cuda":
        raise ExecutorConfigError("--device cuda: torch sees no CUDA device on this host")
    return ["cpu"]


def run_celery_worker(settings: Settings, *, queues: list[str], device: str | None) -> None:
    """Consume ``queues`` until stopped (SIGTERM: finish the running job, then exit).

    Args:
        settings: broker, database, storage, limits.
        queues: ``gpu`` and/or ``cpu``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default ``GRAFT_DEVICE``.

    Raises:
        ExecutorConfigError: no broker, SQLite, or no CUDA device for ``--device cuda``.
    """
    check_celery_settings(settings)
    device = pin_device(device, settings)
    devices = _devices(device)
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
    celery = make_celery(settings, with_task=True)
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
