"""Authentication as a mode, and caps on what a request may make the API read (issue 12).

Each test builds its own app on a fresh, migrated SQLite file: the auth mode is a property of
the database's history (was a key ever created?) and of ``GRAFT_AUTH``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from app.api.access import PUBLIC_PATHS, is_public
from app.api.main import create_app
from app.config import Settings
from app.db.session import Database
from app.services.auth import create_key, revoke_key
from app.services.bootstrap import bind_host, prepare

SKELETON_CAP = 50


def _tiny_safetensors() -> bytes:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    return len(header).to_bytes(8, "little") + header + bytes(4)


def _settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{root / 'graft.db'}",
        "storage_dir": root / "blobs",
        "inspectors": 1,
        "workers": 0,
        "max_json_bytes": 64 * 1024,
        "max_skeleton_tensors": SKELETON_CAP,
        "maintenance_seconds": 0,
        **overrides,
    }
    return Settings(**values)


def _client(settings: Settings) -> TestClient:
    prepare(settings)
    return TestClient(create_app(settings))


def _create_key(settings: Settings, owner: str = "alice") -> tuple[str, str]:
    database = Database(settings.database_url)
    with database.transaction() as session:
        key, token = create_key(session, owner=owner, scopes=["write"])
        key_id = key.id
    database.dispose()
    return key_id, token


def _revoke(settings: Settings, key_id: str) -> None:
    database = Database(settings.database_url)
    with database.transaction() as session:
        assert revoke_key(session, key_id)
    database.dispose()


def _assert_problem(response, status: int, problem_type: str, detail: str = "") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == problem_type, response.json()
    assert detail in response.json()["detail"]


@pytest.fixture
def auto(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = _settings(tmp_path)
    with _client(settings) as client:
        yield client, settings


# --- item 3: authentication is a mode, not a side effect of the key count --------------------


def test_revoking_the_last_key_locks_the_service(auto: tuple[TestClient, Settings]) -> None:
    client, settings = auto
    assert client.get("/v1/auth").json()["mode"] == "local"
    assert client.get("/v1/jobs").status_code == 200  # no key was ever made: local
    key_id, token = _create_key(settings)
    assert client.get("/v1/auth").json()["mode"] == "keys"
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    _revoke(settings, key_id)
    # No active key is left; before the fix every one of these got 200 as owner `local`.
    for headers in ({}, {"Authorization": f"Bearer {token}"}, {"Authorization": "Bearer junk"}):
        _assert_problem(client.get("/v1/jobs", headers=headers), 401, "unauthorized")
    assert client.get("/v1/auth").json()["mode"] == "keys"


def test_keys_mode_refuses_anonymous_requests_before_any_key_exists(tmp_path: Path) -> None:
    with _client(_settings(tmp_path, auth="keys")) as client:
        assert client.get("/v1/auth").json()["mode"] == "keys"
        r = client.get("/v1/checkpoints")
        _assert_problem(r, 401, "unauthorized", "send an API key")
        assert r.headers["www-authenticate"] == 'Bearer realm="graft"'


def test_local_mode_ignores_keys(tmp_path: Path) -> None:
    settings = _settings(tmp_path, auth="local")
    prepare(settings)
    _create_key(settings)
    with _client(settings) as client:
        assert client.get("/v1/auth").json()["mode"] == "local"
        assert client.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize(
    ("auth", "keys", "asked", "expected"),
    [
        ("auto", False, "0.0.0.0", ("127.0.0.1", "auto")),
        ("local", True, "0.0.0.0", ("127.0.0.1", "local")),
        ("auto", True, "0.0.0.0", ("0.0.0.0", "keys")),
        ("keys", False, "0.0.0.0", ("0.0.0.0", "keys")),
        ("auto", True, "127.0.0.1", ("127.0.0.1", "auto")),
        ("auto", False, "::1", ("::1", "auto")),
    ],
)
def test_a_server_beyond_loopback_always_requires_keys(
    tmp_path: Path, auth: str, keys: bool, asked: str, expected: tuple[str, str]
) -> None:
    settings = _settings(tmp_path, auth=auth)
    prepare(settings)
    if keys:
        _revoke(settings, _create_key(settings)[0])  # revoked at once: it still counts
    assert bind_host(settings, asked) == expected


def test_public_routes_are_listed_in_one_place() -> None:
    assert {"/healthz", "/readyz", "/", "/docs", "/openapi.json", "/v1/auth"} <= PUBLIC_PATHS
    for method, path in [
        ("GET", "/web/app.js"),
        ("GET", "/v1/schemas/report"),
        ("GET", "/v1/links/abc"),
        ("POST", "/v1/hooks/mlflow"),
    ]:
        assert is_public(method, path), path
    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", "/v1/hooks/mlflow"),
        ("POST", "/v1/checkpoints"),
        ("GET", "/v1/authx"),
    ]:
        assert not is_public(method, path), path


def test_public_routes_answer_without_a_key_in_keys_mode(tmp_path: Path) -> None:
    with _client(_settings(tmp_path, auth="keys")) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/v1/auth").status_code == 200


# --- item 2: keys before bodies; caps on JSON bodies -----------------------------------------


def _job(skeleton: dict[str, Any]) -> dict[str, Any]:
    return {"source": "0" * 32, "target": {"skeleton": skeleton}}


def _skeleton(n: int, **extra: Any) -> dict[str, Any]:
    tensors = {f"t{i}": {"shape": [1], "dtype": "float32"} for i in range(n)}
    return {"schema": "graft.skeleton/v1", "tensors": tensors, **extra}


def test_an_anonymous_body_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    with _client(_settings(tmp_path, auth="keys")) as client:
        # Invalid JSON, and over the cap: were it read or parsed first, the answer would be
        # 413 or 422; the key is checked first.
        r = client.post(
            "/v1/jobs", content=b"[" * 100_000, headers={"content-type": "application/json"}
        )
        _assert_problem(r, 401, "unauthorized")
        assert r.headers["connection"] == "close"


def test_a_json_body_over_the_cap_is_413(auto: tuple[TestClient, Settings]) -> None:
    client, settings = auto
    body = json.dumps(_job(_skeleton(1, pad="x" * settings.max_json_bytes))).encode()
    r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    _assert_problem(r, 413, "too-large", "GRAFT_MAX_JSON_BYTES (65536 bytes)")


def test_a_chunked_json_body_over_the_cap_is_413(auto: tuple[TestClient, Settings]) -> None:
    client, settings = auto

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"source": "x", "target": {"skeleton": {"pad": "'
        for _ in range(settings.max_json_bytes // 1024 + 1):
            yield b"x" * 1024
        yield b'"}}}'

    r = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    _assert_problem(r, 413, "too-large", "GRAFT_MAX_JSON_BYTES")


def test_a_deeply_nested_skeleton_is_413(auto: tuple[TestClient, Settings]) -> None:
    client, _ = auto
    deep: Any = 1
    for _ in range(900):
        deep = {"x": deep}
    r = client.post("/v1/jobs", json=_job(_skeleton(1, deep=deep)))
    _assert_problem(r, 413, "too-large", "nests deeper than 32 levels")


def test_a_skeleton_over_the_tensor_cap_is_413(auto: tuple[TestClient, Settings]) -> None:
    client, _ = auto
    r = client.post("/v1/jobs", json=_job(_skeleton(SKELETON_CAP + 1)))
    _assert_problem(r, 413, "too-large", f"{SKELETON_CAP + 1} tensors; at most {SKELETON_CAP}")
    # At the cap the skeleton is accepted as far as the cap goes (the source id is unknown).
    r = client.post("/v1/jobs", json=_job(_skeleton(SKELETON_CAP)))
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "invalid-job"


# --- item 5: the concurrent-upload caps (the per-owner one is exercised end to end) -----------


def test_upload_slots_cap_each_owner_and_the_total() -> None:
    from app.api.uploads import UploadSlots
    from app.services.errors import TooManyUploadsError

    slots = UploadSlots(total=3, per_owner=2)
    with slots.claim("a"), slots.claim("a"):
        with (
            pytest.raises(TooManyUploadsError, match="2 uploads of yours") as caught,
            slots.claim("a"),
        ):
            pass
        assert caught.value.headers == {"Retry-After": "5"}
        with slots.claim("b"):
            with (
                pytest.raises(TooManyUploadsError, match="receiving 3 uploads already"),
                slots.claim("c"),
            ):
                pass
            assert slots.active == 3
    assert slots.active == 0  # released, errors included
    with slots.claim("c"):
        assert slots.active == 1


def test_inspection_runs_under_its_own_memory_budget(tmp_path: Path) -> None:
    from tests.fixtures import deep_pickle

    # 100,000 nested lists need ~6 MB to unpickle; with the default budget the depth cap
    # refuses them (413 "nests deeper"), with a 1 MiB budget memory runs out first.
    settings = _settings(tmp_path, sandbox_inspect_memory_bytes=1024**2)
    with _client(settings) as client:
        r = client.post("/v1/checkpoints?filename=deep.pt", content=deep_pickle(100_000))
        assert r.status_code in (413, 422), r.text
        assert "memory" in r.json()["detail"], r.json()
        ok = client.post("/v1/checkpoints?filename=ok.safetensors", content=_tiny_safetensors())
        assert ok.status_code == 201, ok.text  # the same child, a fresh budget
