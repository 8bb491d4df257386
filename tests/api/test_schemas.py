"""GET /v1/schemas/{name}: the published JSON Schemas, public, typed in OpenAPI."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db.session import Database
from app.engine.schemas import SCHEMA_NAMES, load_schema
from app.services.auth import create_key
from app.services.bootstrap import prepare


def test_every_schema_is_served_as_shipped(client: TestClient) -> None:
    for name in SCHEMA_NAMES:
        r = client.get(f"/v1/schemas/{name}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/schema+json"
        assert r.json() == load_schema(name)
        assert r.json()["$id"] == f"graft.{name}/v1"


def test_an_unknown_schema_is_a_problem(client: TestClient) -> None:
    r = client.get("/v1/schemas/job")
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "validation-error"


def test_the_route_is_typed_in_openapi(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    get = spec["paths"]["/v1/schemas/{name}"]["get"]
    (param,) = get["parameters"]
    assert (param["name"], param["in"], param["schema"]["enum"]) == (
        "name", "path", list(SCHEMA_NAMES),
    )  # fmt: skip
    assert list(get["responses"]["200"]["content"]) == ["application/schema+json"]
    document = get["responses"]["200"]["content"]["application/schema+json"]["schema"]
    assert document["required"] == ["$schema", "$id", "title", "type"]
    assert "security" not in get


def test_schemas_need_no_key_when_keys_are_on(settings: Settings, tmp_path: Path) -> None:
    keyed = settings.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'graft.db'}",
            "storage_dir": tmp_path / "blobs",
        }
    )
    prepare(keyed)
    database = Database(keyed.database_url)
    with database.transaction() as session:
        create_key(session, owner="alice", scopes=["read"])
    database.dispose()
    with TestClient(create_app(keyed)) as client:
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/schemas/report").status_code == 200
