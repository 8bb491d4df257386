"""Issue 23's heavy requests, sent as the attack sent them: no work under the write lock,
a deadline on every body, and the per-owner job cap (SPEC §5.3).

Two owners with keys; the in-process app over a migrated SQLite file. Latency margins are
generous (the verdict must not change on a loaded 2-core machine); bench/fairness.py measures.
"""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from app.config import Settings
from app.db.session import Database
from app.services.auth import create_key
from tests.fixtures import tiny_state_dict

# The attack's recipe: 16 rules that took 8-11 s to compile, under the write lock.
HEAVY_RECIPE = {"rename": [{"regex": f"\\pL{{1,300}}k{n}", "to": "z"} for n in range(16)]}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("graft")
    return Settings(
        database_url=f"sqlite:///{root / 'graft.db'}",
        storage_dir=root / "blobs",
        max_upload_bytes=1_000_000,
        inspectors=1,
        workers=0,
        busy_timeout_ms=3_000,
        max_active_jobs_per_owner=3,
        maintenance_seconds=0,
    )


@pytest.fixture(scope="module")
def keys(client, settings: Settings) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    database = Database(settings.database_url)
    headers = {}
    with database.transaction() as session:
        for owner in ("team-a", "team-b"):
            _, token = create_key(session, owner=owner, scopes=["write"])
            headers[owner] = {"Authorization": f"Bearer {token}"}
    database.dispose()
    return headers


@pytest.fixture
def write_lock(settings: Settings) -> Iterator[None]:
    """Another connection holds SQLite's write lock for the test's duration."""
    conn = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _checkpoint(client, headers: dict[str, str], seed: int = 0) -> str:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    torch.save(tiny_state_dict(seed), buf)
    r = client.post("/v1/checkpoints?filename=m.pt", content=buf.getvalue(), headers=headers)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _job_body(source: str, recipe: object = None) -> dict[str, object]:
    return {"source": source, "target": {"checkpoint": source}, "recipe": recipe}


def test_heavy_regexes_are_refused_without_the_write_lock(client, keys, write_lock) -> None:  # type: ignore[no-untyped-def]
    # Another transaction holds the lock: a request that compiled under it would wait out
    # the busy timeout and fail with 500; this one never asks for the lock.
    started = time.monotonic()
    r = client.post("/v1/jobs", json=_job_body("c" * 32, HEAVY_RECIPE), headers=keys["team-a"])
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "invalid-recipe"
    assert "rename[0]" in r.json()["detail"]
    assert "256 KiB budget" in r.json()["detail"]
    assert time.monotonic() - started < 2.5  # under the 3 s busy timeout


def test_heavy_pipeline_regexes_are_refused_without_the_write_lock(  # type: ignore[no-untyped-def]
    client, keys, write_lock
) -> None:
    body = {
        "name": "heavy",
        "trigger": {"model": "m"},
        "target": {"checkpoint": "c" * 32},
        "recipe": HEAVY_RECIPE,
    }
    r = client.post("/v1/pipelines", json=body, headers=keys["team-a"])
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "invalid-recipe"


def test_heavy_recipe_costs_another_owner_nothing(client, keys) -> None:  # type: ignore[no-untyped-def]
    source = _checkpoint(client, keys["team-a"])
    answers: list[int] = []

    def heavy() -> None:
        for _ in range(4):
            r = client.post(
                "/v1/jobs", json=_job_body(source, HEAVY_RECIPE), headers=keys["team-a"]
            )
            answers.append(r.status_code)

    thread = threading.Thread(target=heavy)
    thread.start()
    waits = []
    while thread.is_alive() or not waits:
        started = time.monotonic()
        r = client.post("/v1/webhooks/secret", headers=keys["team-b"])
        waits.append(time.monotonic() - started)
        assert r.status_code == 201, r.text
    thread.join()
    assert answers == [422] * 4
    assert max(waits) < 3.0  # the attack made it wait 8-11 s
