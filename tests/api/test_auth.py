"""API keys and ownership: 401 without a valid key, 404 for another owner's resources."""

from __future__ import annotations

import io

import pytest
import torch

from app.config import Settings
from app.db.models import Artifact, Job
from app.db.session import Database
from app.services.auth import create_key, revoke_key
from app.storage import open_store
from tests.fixtures import tiny_state_dict


def _saved(seed: int) -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_state_dict(seed), buf)
    return buf.getvalue()


def _key(settings: Settings, owner: str, *scopes: str) -> dict[str, str]:
    database = Database(settings.database_url)
    with database.transaction() as session:
        _, token = create_key(session, owner=owner, scopes=list(scopes))
    database.dispose()
    return {"Authorization": f"Bearer {token}"}


def _problem(response, status: int, problem_type: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.json()["type"] == problem_type


@pytest.fixture(scope="module")
def keyless_upload(client) -> str:
    # Made before any key exists: it belongs to the "local" owner.
    r = client.post("/v1/checkpoints?filename=local.pt", content=_saved(9))
    assert r.status_code == 201
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def keys(client, settings: Settings, keyless_upload: str) -> dict[str, dict[str, str]]:
    return {
        "a": _key(settings, "team-a", "write"),
        "b": _key(settings, "team-b", "write"),
        "a-read": _key(settings, "team-a", "read"),
        "admin": _key(settings, "ops", "admin"),
    }


@pytest.fixture(scope="module")
def owned(client, settings: Settings, keys: dict[str, dict[str, str]]) -> dict[str, str]:
    """A's checkpoint and a finished job of A's with published weights."""
    r = client.post("/v1/checkpoints?filename=a.pt", content=_saved(1), headers=keys["a"])
    assert r.status_code == 201, r.text
    checkpoint = r.json()["id"]
    r = client.post(
        "/v1/jobs",
        json={"source": checkpoint, "target": {"checkpoint": checkpoint}},
        headers=keys["a"],
    )
    assert r.status_code == 202, r.text
    queued = r.json()["id"]
    database = Database(settings.database_url)
    sha, size = open_store(settings).put_bytes(b"weights of team a")
    with database.transaction() as session:
        job = Job(owner="team-a", source_id=checkpoint, target={"checkpoint": checkpoint})
        job.status = "succeeded"
        session.add(job)
        session.flush()
        for name in ("weights", "report", "manifest"):
            session.add(
                Artifact(
                    job_id=job.id,
                    name=name,
                    filename=name,
                    media_type="application/octet-stream",
                    sha256=sha,
                    size=size,
                )
            )
        done = job.id
    database.dispose()
    return {"checkpoint": checkpoint, "queued": queued, "done": done}


def test_keyless_default_acts_for_local(client, keyless_upload: str) -> None:
    r = client.get(f"/v1/checkpoints/{keyless_upload}")
    assert r.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer graft_0123456789abcdef_" + "x" * 43, "Bearer x"],
)
def test_missing_or_invalid_credentials_get_401(client, keys, authorization) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (
        ("GET", "/v1/checkpoints"),
        ("POST", "/v1/checkpoints?filename=x.pt"),
        ("GET", "/v1/jobs"),
    ):
        r = client.request(method, path, headers=headers, content=b"")
        _problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_owner_b_gets_404_for_everything_of_a(client, keys, owned: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    b = keys["b"]
    cid, done, queued = owned["checkpoint"], owned["done"], owned["queued"]
    for method, path, extra in (
        ("GET", f"/v1/checkpoints/{cid}", {}),
        ("GET", f"/v1/checkpoints/{cid}/tensors", {}),
        ("DELETE", f"/v1/checkpoints/{cid}", {}),
        ("GET", f"/v1/jobs/{done}", {}),
        ("GET", f"/v1/jobs/{done}/report", {}),
        ("GET", f"/v1/jobs/{done}/manifest", {}),
        ("GET", f"/v1/jobs/{done}/artifacts", {}),
        ("GET", f"/v1/jobs/{done}/weights", {}),
        ("GET", f"/v1/jobs/{done}/weights", {"Range": "bytes=0-3"}),
        ("POST", f"/v1/jobs/{queued}/cancel", {}),
    ):
        r = client.request(method, path, headers={**b, **extra})
        _problem(r, 404, "not-found")
    # B's lists do not show A's things, and B cannot use A's checkpoint in a job.
    assert client.get("/v1/checkpoints", headers=b).json()["count"] == 0
    assert client.get("/v1/jobs", headers=b).json()["count"] == 0
    r = client.post("/v1/jobs", json={"source": cid, "target": {"checkpoint": cid}}, headers=b)
    _problem(r, 422, "invalid-job")
    # A still has everything.
    a = keys["a"]
    assert client.get(f"/v1/checkpoints/{cid}", headers=a).status_code == 200
    r = client.get(f"/v1/jobs/{done}/weights", headers={**a, "Range": "bytes=0-6"})
    assert (r.status_code, r.content) == (206, b"weights")
    assert client.get("/v1/jobs", headers=a).json()["count"] == 2


def test_same_bytes_from_two_owners_are_two_records(client, keys, owned) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/checkpoints?filename=a.pt", content=_saved(1), headers=keys["b"])
    assert r.status_code == 201  # not A's record handed to B
    assert r.json()["id"] != owned["checkpoint"]


def test_read_scope_cannot_write(client, keys, owned) -> None:  # type: ignore[no-untyped-def]
    reader = keys["a-read"]
    assert client.get(f"/v1/checkpoints/{owned['checkpoint']}", headers=reader).status_code == 200
    r = client.post("/v1/checkpoints?filename=x.pt", content=_saved(2), headers=reader)
    _problem(r, 403, "forbidden")
    r = client.post(f"/v1/jobs/{owned['queued']}/cancel", headers=reader)
    _problem(r, 403, "forbidden")


def test_admin_sees_every_owner(client, keys, owned, keyless_upload: str) -> None:  # type: ignore[no-untyped-def]
    admin = keys["admin"]
    assert client.get(f"/v1/jobs/{owned['done']}", headers=admin).status_code == 200
    assert client.get(f"/v1/checkpoints/{keyless_upload}", headers=admin).status_code == 200


def test_revoked_key_gets_401(client, settings: Settings) -> None:
    headers = _key(settings, "team-c", "read")
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    database = Database(settings.database_url)
    with database.transaction() as session:
        assert revoke_key(session, headers["Authorization"].split()[1])
    database.dispose()
    _problem(client.get("/v1/jobs", headers=headers), 401, "unauthorized")
