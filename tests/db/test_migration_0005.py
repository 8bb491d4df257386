"""Migration 0005 (the jobs' report warnings) goes down and up again on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from alembic import command
from app.db.migrate import alembic_config, upgrade


def _columns(database: object) -> set[str]:
    return {c["name"] for c in inspect(database.engine).get_columns("jobs")}  # type: ignore[attr-defined]


def _downgrade(database: object, revision: str) -> None:
    config = alembic_config()
    with database.engine.begin() as connection:  # type: ignore[attr-defined]
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@pytest.mark.parametrize("backend", ["sqlite_database", "postgres_database"])
def test_warnings_column_down_and_up(backend: str, request: pytest.FixtureRequest) -> None:
    database = request.getfixturevalue(backend)
    assert "warnings" in _columns(database)
    _downgrade(database, "0003")
    assert "warnings" not in _columns(database)
    upgrade(database)
    assert "warnings" in _columns(database)
