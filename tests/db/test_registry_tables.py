"""Pipelines, processed MLflow deliveries and job results (migration 0004), on SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from alembic import command
from app.db.base import utcnow
from app.db.migrate import alembic_config, upgrade
from app.db.models import Job, JobStatus, MlflowDelivery, Pipeline
from app.db.repositories import (
    DeliveryRepository,
    JobEnd,
    JobRepository,
    Lease,
    PipelineRepository,
)
from app.db.session import Database


def _pipeline(owner: str, name: str, model: str) -> Pipeline:
    spec = {"name": name, "trigger": {"model": model}}
    return Pipeline(
        owner=owner, name=name, trigger_model=model, trigger_on="model_version_created", spec=spec
    )


def test_pipeline_names_are_unique_per_owner(any_database: Database) -> None:
    with any_database.transaction() as session:
        repo = PipelineRepository(session)
        repo.add(_pipeline("alice", "p", "m"))
        repo.add(_pipeline("bob", "p", "m"))  # another owner may reuse the name
        repo.add(_pipeline("alice", "q", "other"))
    with pytest.raises(IntegrityError), any_database.transaction() as session:
        PipelineRepository(session).add(_pipeline("alice", "p", "m2"))
    with any_database.transaction(write=False) as session:
        repo = PipelineRepository(session)
        assert [(p.owner, p.name) for p in repo.triggered_by("m")] == [("alice", "p"), ("bob", "p")]
        assert repo.page(offset=0, limit=10, owner="alice")[1] == 2
        assert repo.get("q", owner="bob") is None


def test_a_delivery_id_is_recorded_once(any_database: Database) -> None:
    with any_database.transaction() as session:
        DeliveryRepository(session).add(
            MlflowDelivery(delivery_id="d1", event="model_version.created", jobs=["j1"])
        )
    with pytest.raises(IntegrityError), any_database.transaction() as session:
        DeliveryRepository(session).add(MlflowDelivery(delivery_id="d1", event="e", jobs=[]))
    with any_database.transaction(write=False) as session:
        seen = DeliveryRepository(session).get("d1")
        assert seen is not None and seen.jobs == ["j1"]


def test_finish_records_the_fetched_source_and_the_registry_result(
    any_database: Database,
) -> None:
    now = utcnow()
    with any_database.transaction() as session:
        pipeline = PipelineRepository(session).add(_pipeline("local", "p", "m"))
        job = JobRepository(session).add(
            Job(
                target={"skeleton": {}},
                source_ref={"uri": "models:/m/1"},
                register={"registry": "mlflow", "name": "out"},
                pipeline_id=pipeline.id,
                status=JobStatus.running,
                lease_owner="w",
                started_at=now,
            )
        )
        job_id = job.id
    result = {"registry": {"uri": "models:/out/3", "version": "3"}, "source_version": "1"}
    with any_database.transaction() as session:
        assert JobRepository(session).finish(
            Lease(job_id, "w", 0),
            now=now,
            end=JobEnd(status=JobStatus.succeeded, ok=True, result=result),
        )
    with any_database.transaction() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        assert (job.status, job.result, job.source_id) == ("succeeded", result, None)
        PipelineRepository(session).delete(PipelineRepository(session).get("p", owner="local"))
    with any_database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None and job.pipeline_id is None  # the job outlives its pipeline


def test_migration_0004_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        upgrade(database)
        config = alembic_config()
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0003")
        tables = set(inspect(database.engine).get_table_names())
        assert {"pipelines", "mlflow_deliveries"} & tables == set()
        columns = {c["name"] for c in inspect(database.engine).get_columns("jobs")}
        assert {"source_ref", "register", "result", "pipeline_id"} & columns == set()
        upgrade(database)
        columns = {c["name"] for c in inspect(database.engine).get_columns("jobs")}
        assert {"source_ref", "register", "result", "pipeline_id"} <= columns
    finally:
        database.dispose()
