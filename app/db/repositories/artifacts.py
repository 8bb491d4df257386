"""Queries for a job's artifacts."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import (
    Artifact,
)

__all__ = ["ArtifactRepository"]


class ArtifactRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, artifact: Artifact) -> Artifact:
        self.session.add(artifact)
        self.session.flush()
        return artifact

    def get(self, job_id: str, name: str) -> Artifact | None:
        return self.session.scalars(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
        ).first()

    def for_job(self, job_id: str) -> list[Artifact]:
        return list(
            self.session.scalars(
                select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
            )
        )
