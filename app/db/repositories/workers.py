"""Queries for the workers' presence table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    Worker,
)

__all__ = ["WorkerRepository"]


class WorkerRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, worker: Worker) -> None:
        """Insert a worker, or refresh the one with its id."""
        self.session.merge(worker)
        self.session.flush()

    def beat(self, worker_id: str, *, now: datetime) -> bool:
        """Record a heartbeat. Returns whether the worker is recorded."""
        result = self.session.execute(
            update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def remove(self, worker_id: str) -> None:
        self.session.execute(delete(Worker).where(Worker.id == worker_id))

    def alive(self, *, since: datetime) -> list[Worker]:
        """Workers that heartbeated at or after ``since``."""
        return list(
            self.session.scalars(
                select(Worker).where(Worker.heartbeat_at >= since).order_by(Worker.id)
            )
        )

    def stale(self, *, before: datetime) -> list[Worker]:
        """Workers whose last heartbeat is older than ``before``."""
        return list(
            self.session.scalars(
                select(Worker).where(Worker.heartbeat_at < before).order_by(Worker.id)
            )
        )

    def gpu_alive(self, *, since: datetime) -> bool:
        """Whether a worker with a CUDA device that consumes ``gpu`` heartbeated since."""
        return any(
            "gpu" in w.queues and any(d.startswith("cuda") for d in w.devices)
            for w in self.alive(since=since)
        )

    def prune(self, *, before: datetime) -> int:
        """Forget workers silent since ``before`` (they died without saying goodbye)."""
        result = self.session.execute(delete(Worker).where(Worker.heartbeat_at < before))
        return int(result.rowcount)  # type: ignore[attr-defined]
