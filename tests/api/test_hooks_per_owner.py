"""Idempotency keys, webhook secrets, the sha256 look-up, deliveries and events are all per
owner (keys mode, in-process app over a migrated SQLite file)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from app.config import Settings
from tests.api.conftest import bearer_keys
from tests.fixtures import tiny_state_dict


def _saved(seed: int) -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_state_dict(seed), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def keys(client, settings: Settings) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    return bearer_keys(settings, [(owner, owner, "write") for owner in ("team-a", "team-b")])


def _upload(client, headers: dict[str, str], seed: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    r = client.post("/v1/checkpoints?filename=m.pt", content=_saved(seed), headers=headers)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def test_idempotency_keys_belong_to_their_owner(client, keys) -> None:  # type: ignore[no-untyped-def]
    a, b = keys["team-a"], keys["team-b"]
    ca, cb = _upload(client, a, 1), _upload(client, b, 1)
    same = {"Idempotency-Key": "shared-key"}
    ja = client.post("/v1/jobs", json={"source": ca["id"], "target": {"checkpoint": ca["id"]}},
                     headers={**a, **same})  # fmt: skip
    jb = client.post("/v1/jobs", json={"source": cb["id"], "target": {"checkpoint": cb["id"]}},
                     headers={**b, **same})  # fmt: skip
    assert (ja.status_code, jb.status_code) == (202, 202)
    assert ja.json()["id"] != jb.json()["id"]
    assert "idempotent-replayed" not in jb.headers
    # Without a valid key nothing is stored or replayed: the route answers 401 each time.
    for _ in range(2):
        r = client.post("/v1/jobs", json={}, headers={**same, "Authorization": "Bearer nope"})
        assert (r.status_code, r.json()["type"]) == (401, "unauthorized")
    long = client.post("/v1/jobs", json={}, headers={**a, "Idempotency-Key": "k" * 256})
    assert (long.status_code, long.json()["type"]) == (400, "bad-request")


def test_the_sha256_look_up_sees_only_your_checkpoints(client, keys) -> None:  # type: ignore[no-untyped-def]
    mine = _upload(client, keys["team-a"], 7)
    found = client.get(f"/v1/checkpoints?sha256={mine['sha256']}", headers=keys["team-a"]).json()
    theirs = client.get(f"/v1/checkpoints?sha256={mine['sha256']}", headers=keys["team-b"]).json()
    assert [c["id"] for c in found["data"]] == [mine["id"]] and found["count"] == 1
    assert theirs == {"data": [], "count": 0}
    bad = client.get("/v1/checkpoints?sha256=xyz", headers=keys["team-a"])
    assert (bad.status_code, bad.json()["type"]) == (422, "validation-error")


def test_secrets_callbacks_deliveries_and_events_per_owner(client, keys) -> None:  # type: ignore[no-untyped-def]
    a, b = keys["team-a"], keys["team-b"]
    ca = _upload(client, a, 3)
    body = {"source": ca["id"], "target": {"checkpoint": ca["id"]},
            "callback": {"url": "https://hooks.example.com/graft"}}  # fmt: skip
    refused = client.post("/v1/jobs", json=body, headers=a)
    # The allow list is empty here: the host is refused before any secret matters.
    assert (refused.status_code, refused.json()["type"]) == (422, "outbound-refused")
    secret_a = client.post("/v1/webhooks/secret", headers=a)
    secret_b = client.post("/v1/webhooks/secret", headers=b)
    assert secret_a.status_code == secret_b.status_code == 201
    assert secret_a.json()["secret"] != secret_b.json()["secret"]
    assert client.post("/v1/webhooks/secret").status_code == 401

    job = client.post("/v1/jobs", json={k: v for k, v in body.items() if k != "callback"},
                      headers=a).json()  # fmt: skip
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=a).json()["status"] == "cancelled"
    for path in ("deliveries", "events"):
        other = client.get(f"/v1/jobs/{job['id']}/{path}", headers=b)
        assert (other.status_code, other.json()["type"]) == (404, "not-found")
    assert client.get(f"/v1/jobs/{job['id']}/deliveries", headers=a).json() == {
        "data": [], "count": 0,
    }  # fmt: skip
    stream = client.get(f"/v1/jobs/{job['id']}/events", headers=a)
    assert stream.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in stream.text.split("\n\n") if b]
    statuses = [json.loads(b.split("data: ", 1)[1])["status"] for b in blocks]
    assert statuses == ["queued", "cancelled"]
    assert [b.splitlines()[:2] for b in blocks] == [
        ["id: 1", "event: status"], ["id: 2", "event: status"],
    ]  # fmt: skip
    done = client.get(f"/v1/jobs/{job['id']}/events", headers={**a, "Last-Event-ID": "2"})
    assert done.status_code == 204
    bad = client.get(f"/v1/jobs/{job['id']}/events", headers={**a, "Last-Event-ID": "x"})
    assert (bad.status_code, bad.json()["type"]) == (400, "bad-request")
