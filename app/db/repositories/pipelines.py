"""Queries for pipelines and the MLflow deliveries that trigger them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import (
    MlflowDelivery,
    Pipeline,
)
from app.db.repositories._page import page

__all__ = ["DeliveryRepository", "PipelineRepository"]


class PipelineRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, name: str, *, owner: str) -> Pipeline | None:
        return self.session.scalar(
            select(Pipeline).where(Pipeline.owner == owner, Pipeline.name == name)
        )

    def add(self, pipeline: Pipeline) -> Pipeline:
        self.session.add(pipeline)
        self.session.flush()
        return pipeline

    def page(self, *, offset: int, limit: int, owner: str | None) -> tuple[list[Pipeline], int]:
        where = [Pipeline.owner == owner] if owner is not None else []
        order = (Pipeline.name,)
        return page(self.session, Pipeline, where=where, order_by=order, offset=offset, limit=limit)

    def triggered_by(self, model: str) -> list[Pipeline]:
        """Every owner's pipelines whose trigger names ``model``, oldest first."""
        rows = self.session.scalars(
            select(Pipeline)
            .where(Pipeline.trigger_model == model)
            .order_by(Pipeline.created_at, Pipeline.id)
        )
        return list(rows)

    def delete(self, pipeline: Pipeline) -> None:
        self.session.delete(pipeline)
        self.session.flush()


class DeliveryRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, delivery_id: str) -> MlflowDelivery | None:
        return self.session.get(MlflowDelivery, delivery_id)

    def add(self, delivery: MlflowDelivery) -> MlflowDelivery:
        self.session.add(delivery)
        self.session.flush()
        return delivery
