"""The Celery application: queues, reliability settings, the task, and the API's dispatcher.

Messages carry only a job id; the database row is the truth. The settings are the ones
that make a crash safe on RabbitMQ: a message is acknowledged only after the task returns
(``task_acks_late``), a worker process that dies mid-task gives its message back
(``task_reject_on_worker_lost``), and a worker holds one message at a time
(``worker_prefetch_multiplier=1``) so a redelivery is never stuck behind a long job.
Queue and exchange names carry ``GRAFT_QUEUE_PREFIX`` so that deployments (and test runs)
sharing a broker never see each other's jobs.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Exchange, Queue

from app.config import Settings

__all__ = ["QUEUES", "CeleryDispatcher", "make_celery", "queue_name"]

logger = logging.getLogger(__name__)

QUEUES = ("gpu", "cpu")
TASK_NAME = "graft.run_job"
_VISIBILITY_MARGIN = 600  # seconds beyond the hard time limit


def queue_name(prefix: str, queue: str) -> str:
    """The broker's name of queue ``gpu`` or ``cpu`` under ``prefix``."""
    return f"{prefix}.{queue}"


def make_celery(settings: Settings, *, with_task: bool = False) -> Celery:
    """A Celery app for ``settings.broker_url``.

    Args:
        settings: broker URL, queue prefix, time limit.
        with_task: register the job task (workers); the API only sends by name.
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
        from app.executors.celery_task import run_job

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
