"""An in-process app (real inspector children) over a migrated SQLite file in a tmp dir."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2 for its test client; httpx is what we ship.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db.session import Database
from app.services.auth import create_key
from app.services.bootstrap import prepare
from tests.s3server import S3Server


def api_settings(tmp_path_factory: pytest.TempPathFactory, **overrides: Any) -> Settings:
    """The in-process app's settings over a fresh tmp dir; a module's ``settings`` fixture
    passes what it changes as ``overrides``."""
    root = tmp_path_factory.mktemp("graft")
    fields: dict[str, Any] = {
        "database_url": f"sqlite:///{root / 'graft.db'}",
        "storage_dir": root / "blobs",
        "max_upload_bytes": 1_000_000,
        "inspectors": 1,
        "workers": 0,
    }
    return Settings(**(fields | overrides))


def s3_api_settings(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, bucket: str
) -> Settings:
    """The in-process app's settings with its blobs in a new ``bucket`` of ``s3_server``
    (uploads staged under a local tmp dir)."""
    root = tmp_path_factory.mktemp(f"graft-{bucket}")
    return Settings(
        database_url=f"sqlite:///{root / 'graft.db'}",
        storage_dir=root / "local",
        storage_url=f"s3://{s3_server.create_bucket(bucket)}/graft",
        s3_endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        inspectors=1,
        workers=0,
    )


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return api_settings(tmp_path_factory)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    prepare(settings)
    with TestClient(create_app(settings)) as client:
        yield client


def bearer_keys(
    settings: Settings, specs: Iterable[tuple[str, str, str]]
) -> dict[str, dict[str, str]]:
    """New API keys, one per ``(name, owner, scope)`` in ``specs``: their ``Authorization``
    headers by name."""
    database = Database(settings.database_url)
    headers = {}
    with database.transaction() as session:
        for name, owner, scope in specs:
            _, token = create_key(session, owner=owner, scopes=[scope])
            headers[name] = {"Authorization": f"Bearer {token}"}
    database.dispose()
    return headers


def stored_blobs(settings: Settings) -> list[Path]:
    return sorted(p for p in (settings.storage_dir / "sha256").rglob("*") if p.is_file())


def temp_entries(settings: Settings) -> list[Path]:
    return sorted((settings.storage_dir / "tmp").iterdir())


def published_job(
    settings: Settings, source_id: str, sha: str, size: int, filename: str = "w.safetensors"
) -> str:
    """A succeeded job whose ``weights`` artifact is the stored blob ``sha``: enough for the
    download routes, with no worker. Returns the job's id."""
    from app.db.models import Artifact, Job
    from app.db.session import Database

    database = Database(settings.database_url)
    with database.transaction() as session:
        job = Job(source_id=source_id, target={"checkpoint": source_id}, status="succeeded")
        session.add(job)
        session.flush()
        session.add(
            Artifact(
                job_id=job.id,
                name="weights",
                filename=filename,
                media_type="application/octet-stream",
                sha256=sha,
                size=size,
            )
        )
        job_id = str(job.id)
    database.dispose()
    return job_id
