"""Jobs take a parity reference (SPEC §3.2): registered architectures only, checked before the
job is queued; a request can never ask for an import."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

from app.config import Settings
from tests.api.conftest import TestClient


@pytest.fixture(scope="module")
def linear_id(client: TestClient) -> str:
    buf = io.BytesIO()
    torch.manual_seed(7)
    torch.save(nn.Linear(4, 2).state_dict(), buf)
    r = client.post("/v1/checkpoints?filename=ref.pth", content=buf.getvalue())
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


_ARCH = {"architecture": "graft_resnet", "kwargs": {"depth": 18, "num_classes": 3}}


def _stored_reference(settings: Settings, job_id: str) -> Any:
    from app.db.models import Job
    from app.db.session import Database

    database = Database(settings.database_url)
    with database.transaction(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        reference = job.reference
    database.dispose()
    return reference


def test_a_job_keeps_its_reference(client: TestClient, settings: Settings, linear_id: str) -> None:
    reference = {**_ARCH, "inputs": [{"shape": [1, 3, 32, 32]}]}
    r = client.post("/v1/jobs", json={"source": linear_id, "target": _ARCH, "reference": reference})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["links"]["attestation"] == f"/v1/jobs/{job['id']}/attestation"
    assert job["reference"] == _stored_reference(settings, job["id"])
    assert _stored_reference(settings, r.json()["id"]) == {
        "architecture": "graft_resnet",
        "kwargs": {"depth": 18, "num_classes": 3},
        "target_architecture": None,
        "target_kwargs": {},
        "inputs": [{"shape": [1, 3, 32, 32], "dtype": "float32", "low": 0, "high": None}],
    }
    client.post(f"/v1/jobs/{r.json()['id']}/cancel")


@pytest.mark.parametrize(
    ("reference", "kind", "detail"),
    [
        # An import is not a registered architecture: the schema refuses it outright.
        ({"architecture": "os:system"}, "validation-error", "reference.architecture"),
        ({"architecture": "graft_resnet", "allow_imports": True}, "validation-error",
         "reference.allow_imports"),
        ({"architecture": "no_such_arch"}, "invalid-target", "reference.architecture: "),
        ({"architecture": "graft_resnet", "kwargs": {"no_such_kwarg": 1}}, "invalid-target",
         "reference.architecture: "),
    ],
)  # fmt: skip
def test_a_reference_is_a_registered_architecture(
    client: TestClient, linear_id: str, reference: dict[str, Any], kind: str, detail: str
) -> None:
    r = client.post("/v1/jobs", json={"source": linear_id, "target": _ARCH, "reference": reference})
    assert (r.status_code, r.json()["type"]) == (422, kind)
    assert detail in r.json()["detail"]


def test_a_template_target_needs_the_targets_architecture(
    client: TestClient, linear_id: str
) -> None:
    body = {"source": linear_id, "target": {"checkpoint": linear_id},
            "reference": {"architecture": "graft_resnet"}}  # fmt: skip
    r = client.post("/v1/jobs", json=body)
    assert (r.status_code, r.json()["type"]) == (422, "invalid-job")
    assert r.json()["detail"].startswith("reference.target_architecture: ")
    body["reference"] = {"architecture": "graft_resnet", "target_architecture": "graft_resnet"}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    client.post(f"/v1/jobs/{r.json()['id']}/cancel")
