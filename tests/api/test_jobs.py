"""Job requests through the real app (no worker runs here: jobs stay queued)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from tests.api.conftest import TestClient


@pytest.fixture(scope="module")
def checkpoint_id(client: TestClient) -> str:
    buf = io.BytesIO()
    torch.manual_seed(3)
    torch.save(nn.Linear(3, 2).state_dict(), buf)
    r = client.post("/v1/checkpoints?filename=linear.pth", content=buf.getvalue())
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def test_create_get_cancel(client: TestClient, checkpoint_id: str) -> None:
    r = client.post(
        "/v1/jobs",
        json={"source": checkpoint_id, "target": {"checkpoint": checkpoint_id}, "dry_run": True},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["status"], job["progress"], job["dry_run"]) == ("queued", 0.0, True)
    assert client.get(r.headers["location"]).json()["id"] == job["id"]

    busy = client.delete(f"/v1/checkpoints/{checkpoint_id}")
    assert busy.status_code == 409
    assert busy.json()["type"] == "conflict"

    report = client.get(f"/v1/jobs/{job['id']}/report")
    assert report.status_code == 404
    assert report.json()["type"] == "not-found"

    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    listed = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    assert client.get(f"/v1/jobs/{job['id']}/artifacts").json() == {"data": [], "count": 0}


def test_invalid_recipe_names_the_rule(client: TestClient, checkpoint_id: str) -> None:
    r = client.post(
        "/v1/jobs",
        json={
            "source": checkpoint_id,
            "target": {"checkpoint": checkpoint_id},
            "recipe": {
                "version": 1,
                "rename": [{"prefix": "a.", "to": "b."}, {"regex": "(", "to": "x"}],
            },
        },
    )
    assert r.status_code == 422
    problem = r.json()
    assert (problem["type"], problem["rule"]) == ("invalid-recipe", "rename[1]")
    assert problem["detail"].startswith("rename[1]:")


def test_unknown_checkpoint_and_bad_body(client: TestClient, checkpoint_id: str) -> None:
    r = client.post("/v1/jobs", json={"source": "missing", "target": {"checkpoint": checkpoint_id}})
    assert r.status_code == 422
    assert r.json()["type"] == "invalid-job"
    r = client.post("/v1/jobs", json={"source": checkpoint_id, "target": {"nothing": 1}})
    assert r.status_code == 422
    assert r.json()["type"] == "validation-error"
    assert client.get("/v1/jobs/missing").json()["type"] == "not-found"


def test_openapi_has_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    upload = spec["paths"]["/v1/checkpoints"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(upload)
    assert spec["components"]["schemas"]["JobCreate"]["examples"]


def test_architectures_lists_the_engine_registry(client: TestClient) -> None:
    r = client.get("/v1/architectures")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["data"])
