"""Migration 0008 seals the webhook secrets stored in plain text and drops stored idempotent
responses (which may hold one), on SQLite and PostgreSQL; down again opens them."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from alembic import command
from app.db.migrate import alembic_config, upgrade
from app.db.repositories import WebhookRepository

PLAIN = "whsec_" + "A" * 43 + "="


def _downgrade(database: object, revision: str) -> None:
    config = alembic_config()
    with database.engine.begin() as connection:  # type: ignore[attr-defined]
        config.attributes["connection"] = connection
        config.attributes["secret_box"] = database.secret_box  # type: ignore[attr-defined]
        command.downgrade(config, revision)


def _scalars(database: object, sql: str) -> list[object]:
    with database.engine.begin() as connection:  # type: ignore[attr-defined]
        return list(connection.execute(text(sql)).scalars())


@pytest.mark.parametrize("backend", ["sqlite_database", "postgres_database"])
def test_plain_secrets_are_sealed_and_stored_responses_dropped(
    backend: str, request: pytest.FixtureRequest
) -> None:
    database = request.getfixturevalue(backend)
    _downgrade(database, "0007")
    with database.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO webhook_secrets (owner, secret, created_at) VALUES (:o, :s, :t)"),
            {"o": "team-a", "s": PLAIN, "t": "2026-12-01 00:00:00"},
        )
        connection.execute(
            text(
                "INSERT INTO idempotency_keys (owner, key, fingerprint, status_code, headers, "
                "body, created_at, expires_at) VALUES ('team-a', 'k', :f, 201, '[]', :b, :t, :t)"
            ),
            {"f": "f" * 64, "b": b'{"secret":"' + PLAIN.encode() + b'"}', "t": "2026-12-01"},
        )
    upgrade(database)
    [token] = _scalars(database, "SELECT secret FROM webhook_secrets")
    assert isinstance(token, str) and PLAIN not in token and not token.startswith("whsec_")
    assert _scalars(database, "SELECT COUNT(*) FROM idempotency_keys") == [0]
    with database.transaction(write=False) as session:
        assert WebhookRepository(session).secret("team-a") == PLAIN
    _downgrade(database, "0007")
    assert _scalars(database, "SELECT secret FROM webhook_secrets") == [PLAIN]
    upgrade(database)
