"""Apply Alembic migrations programmatically (``graft serve`` and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from app.db.session import Database

__all__ = ["alembic_config", "upgrade"]

_ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Config:
    """The project's Alembic configuration, independent of the working directory."""
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "alembic"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring ``database`` to ``revision`` using its own engine (and its SQLite settings)."""
    config = alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["secret_box"] = database.secret_box
        command.upgrade(config, revision)
