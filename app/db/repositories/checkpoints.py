"""Queries for checkpoints: their tensors and files, who reads them, which blobs they hold.

Repositories flush; the caller's unit of work commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from app.db.models import (
    ACTIVE_STATUSES,
    Artifact,
    Checkpoint,
    CheckpointFile,
    CheckpointTensor,
    Job,
)
from app.db.repositories._page import page

__all__ = ["CheckpointRepository"]


class CheckpointRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, checkpoint_id: str, *, owner: str | None = None) -> Checkpoint | None:
        checkpoint = self.session.get(Checkpoint, checkpoint_id)
        if checkpoint is None or (owner is not None and checkpoint.owner != owner):
            return None
        return checkpoint

    def get_by_sha256(self, sha256: str, *, owner: str) -> Checkpoint | None:
        return self.session.scalars(
            select(Checkpoint).where(Checkpoint.sha256 == sha256, Checkpoint.owner == owner)
        ).first()

    def add(self, checkpoint: Checkpoint, tensors: Sequence[dict[str, Any]]) -> Checkpoint:
        """Insert a checkpoint (with its files attached) and its tensor list."""
        self.session.add(checkpoint)
        self.session.flush()
        self.session.add_all(
            CheckpointTensor(
                checkpoint_id=checkpoint.id,
                position=i,
                key=t["key"],
                shape=list(t["shape"]),
                dtype=t["dtype"],
                kind=t["kind"],
            )
            for i, t in enumerate(tensors)
        )
        self.session.flush()
        return checkpoint

    def page(
        self, *, offset: int, limit: int, owner: str | None = None, sha256: str | None = None
    ) -> tuple[list[Checkpoint], int]:
        where = [Checkpoint.owner == owner] if owner is not None else []
        if sha256 is not None:
            where.append(Checkpoint.sha256 == sha256)
        order = (Checkpoint.created_at.desc(), Checkpoint.id)
        return page(
            self.session, Checkpoint, where=where, order_by=order, offset=offset, limit=limit
        )

    def tensors(
        self, checkpoint_id: str, *, offset: int, limit: int
    ) -> tuple[list[CheckpointTensor], int]:
        where = [CheckpointTensor.checkpoint_id == checkpoint_id]
        order = (CheckpointTensor.position,)
        return page(
            self.session, CheckpointTensor, where=where, order_by=order, offset=offset, limit=limit
        )

    def in_use(self, checkpoint_id: str) -> bool:
        """Whether a queued or running job reads this checkpoint."""
        query = select(
            exists().where(
                Job.status.in_(ACTIVE_STATUSES),
                or_(Job.source_id == checkpoint_id, Job.target_checkpoint_id == checkpoint_id),
            )
        )
        return bool(self.session.scalar(query))

    def referenced_blobs(self, candidates: Sequence[str]) -> set[str]:
        """Which of these blob digests a checkpoint file or an artifact still references."""
        wanted = list(candidates)
        files = self.session.scalars(
            select(CheckpointFile.sha256).where(CheckpointFile.sha256.in_(wanted))
        )
        artifacts = self.session.scalars(select(Artifact.sha256).where(Artifact.sha256.in_(wanted)))
        return set(files) | set(artifacts)

    def delete(self, checkpoint: Checkpoint) -> None:
        self.session.delete(checkpoint)
        self.session.flush()
