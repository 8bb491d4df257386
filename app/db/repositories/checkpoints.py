"""Queries for checkpoints: their tensors and files, who reads them, which blobs they hold.

Repositories flush; the caller's unit of work commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exists, func, insert, or_, select
from sqlalchemy.orm import Session

from app.db.models import (
    ACTIVE_STATUSES,
    Artifact,
    Checkpoint,
    CheckpointFile,
    CheckpointTensorPage,
    Job,
)
from app.db.repositories._page import page

__all__ = ["CheckpointRepository", "TensorRow"]


@dataclass(frozen=True)
class TensorRow:
    """One tensor of a checkpoint's index."""

    key: str
    shape: list[int]
    dtype: str
    kind: str


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

    def add(self, checkpoint: Checkpoint, pages: Sequence[tuple[int, str]]) -> Checkpoint:
        """Insert a checkpoint (with its files attached) and its tensor index.

        Args:
            checkpoint: the record, files attached.
            pages: ``(start, JSON of [[key, shape, dtype, kind], ...])``, in order, built
                before the transaction began
                (:func:`app.services.inspection.tensor_pages`).
        """
        self.session.add(checkpoint)
        self.session.flush()
        if pages:  # one executemany of compact pages, not an ORM object per tensor
            rows = [
                {"checkpoint_id": checkpoint.id, "start": start, "tensors": tensors}
                for start, tensors in pages
            ]
            self.session.execute(insert(CheckpointTensorPage), rows)
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
    ) -> tuple[list[TensorRow], int]:
        """One page of a checkpoint's tensors, in checkpoint order, and how many it holds."""
        pages = CheckpointTensorPage
        last = self.session.execute(
            select(pages.start, pages.tensors)
            .where(pages.checkpoint_id == checkpoint_id)
            .order_by(pages.start.desc())
            .limit(1)
        ).first()
        count = last.start + len(json.loads(last.tensors)) if last is not None else 0
        first = (
            select(func.max(pages.start))
            .where(pages.checkpoint_id == checkpoint_id, pages.start <= offset)
            .scalar_subquery()
        )
        stored = self.session.execute(
            select(pages.start, pages.tensors)
            .where(pages.checkpoint_id == checkpoint_id, pages.start >= first)
            .where(pages.start < offset + limit)
            .order_by(pages.start)
        )
        rows: list[TensorRow] = []
        for start, tensors in stored:
            for i, (key, shape, dtype, kind) in enumerate(json.loads(tensors), start):
                if offset <= i < offset + limit:
                    rows.append(TensorRow(key, shape, dtype, kind))
        return rows, count

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
