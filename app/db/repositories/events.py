"""Queries for a job's status events (the stream clients follow)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import (
    JobEvent,
)

__all__ = ["JobEventRepository"]


class JobEventRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, job_id: str, event: str, data: dict[str, Any], *, terminal: bool) -> int:
        """Add the job's next event. Returns its sequence number (1, 2, …).

        Writers of one job's events are serialised by the job row itself (its lease holder, or
        the transaction that finishes it), so ``max + 1`` cannot collide in practice; the
        primary key makes a collision an error rather than a lost event.
        """
        last = self.session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
        seq = int(last or 0) + 1
        self.session.add(
            JobEvent(job_id=job_id, seq=seq, event=event, data=data, terminal=terminal)
        )
        self.session.flush()
        return seq

    def after(self, job_id: str, seq: int, *, limit: int = 500) -> list[JobEvent]:
        """The job's events numbered above ``seq``, in order."""
        return list(
            self.session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > seq)
                .order_by(JobEvent.seq)
                .limit(limit)
            )
        )

    def get(self, job_id: str, seq: int) -> JobEvent | None:
        return self.session.get(JobEvent, (job_id, seq))
