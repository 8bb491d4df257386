"""Migration 0010 (a checkpoint's tensor index as compact pages) carries the tensors of
existing checkpoints across, down and up again, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from alembic import command
from app.db.migrate import alembic_config, upgrade
from app.db.repositories import CheckpointRepository


def _downgrade(database: object, revision: str) -> None:
    config = alembic_config()
    with database.engine.begin() as connection:  # type: ignore[attr-defined]
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@pytest.mark.parametrize("backend", ["sqlite_database", "postgres_database"])
def test_tensor_rows_become_pages_and_back(backend: str, request: pytest.FixtureRequest) -> None:
    database = request.getfixturevalue(backend)
    _downgrade(database, "0009")
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO checkpoints (id, owner, sha256, filename, size, format, tensors, "
                "elements, bytes, by_dtype, ignored, created_at) VALUES ('c1', 'local', "
                "'ab', 'x.pt', 1, 'torch', 1001, 1001, 1001, '{}', '[]', '2026-01-01')"
            )
        )
        for i in range(1001):
            conn.execute(
                text(
                    "INSERT INTO checkpoint_tensors (checkpoint_id, position, key, shape, "
                    "dtype, kind) VALUES ('c1', :i, :key, '[1, 2]', 'float32', 'parameter')"
                ),
                {"i": i, "key": f"k.{i}"},
            )
    upgrade(database)
    with database.transaction(write=False) as session:
        rows, count = CheckpointRepository(session).tensors("c1", offset=999, limit=5)
    assert count == 1001
    assert [(r.key, r.shape, r.dtype, r.kind) for r in rows] == [
        ("k.999", [1, 2], "float32", "parameter"),
        ("k.1000", [1, 2], "float32", "parameter"),
    ]
    _downgrade(database, "0009")
    with database.engine.begin() as conn:
        keys = conn.execute(
            text("SELECT key FROM checkpoint_tensors WHERE position >= 999 ORDER BY position")
        ).scalars()
        assert list(keys) == ["k.999", "k.1000"]
    upgrade(database)
