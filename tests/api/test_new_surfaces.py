"""Issue 23's Medium and Low items, each sent as the attack sent it (keys mode, in-process app
over a migrated SQLite file, an MLflow tracking URI configured but never reached)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import stat
import time
import warnings
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from app.api.main import create_app
from app.api.routes.web import APP_CSP
from app.config import Settings
from app.db.base import utcnow
from app.db.models import Job, Pipeline
from app.db.secret_box import KEY_FILE_NAME, SecretBox
from app.db.session import Database
from app.services.auth import create_key
from app.services.bootstrap import prepare
from tests.api.conftest import api_settings, bearer_keys
from tests.fixtures import tiny_state_dict

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # as tests/api/conftest.py
    from fastapi.testclient import TestClient

HOOK_SECRET = "mlflow-hook-secret"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return api_settings(
        tmp_path_factory,
        auth="keys",
        mlflow_tracking_uri="http://127.0.0.1:9",
        outbound_allow="mlflow",
        mlflow_webhook_secret=HOOK_SECRET,
    )


@pytest.fixture(scope="module")
def keys(client, settings: Settings) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    return bearer_keys(
        settings, [("a", "team-a", "write"), ("a-read", "team-a", "read"), ("b", "team-b", "write")]
    )


def _checkpoint(client, headers: dict[str, str], seed: int) -> str:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    torch.save(tiny_state_dict(seed), buf)
    r = client.post("/v1/checkpoints?filename=m.pt", content=buf.getvalue(), headers=headers)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _pipeline(name: str, model: str, checkpoint: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "trigger": {"registry": "mlflow", "model": model},
        "target": {"checkpoint": checkpoint},
        **extra,
    }


def _signed(body: bytes, delivery: str, stamp: str | None = None) -> dict[str, str]:
    stamp = str(int(time.time())) if stamp is None else stamp
    mac = hmac.new(HOOK_SECRET.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


def _created(model: str, version: str) -> bytes:
    data = {"name": model, "version": version, "source": "x", "run_id": "r", "tags": {}}
    return json.dumps({"entity": "model_version", "action": "created", "data": data}).encode()


def test_item4_a_broken_pipeline_is_refused_and_never_stops_the_others(  # type: ignore[no-untyped-def]
    client, keys, settings: Settings
) -> None:
    a, b = keys["a"], keys["b"]
    ca, cb = _checkpoint(client, a, 41), _checkpoint(client, b, 42)
    bad = client.post(
        "/v1/pipelines", json=_pipeline("bad", "m4", ca, callback={"url": 123}), headers=a
    )
    assert (bad.status_code, bad.json()["type"]) == (422, "validation-error")
    # A row stored before creation checked callbacks: its event must not stop team-b's pipeline.
    database = Database(settings.database_url)
    with database.transaction() as session:
        spec = _pipeline("old-bad", "m4", ca, callback={"url": 123})
        session.add(
            Pipeline(
                owner="team-a",
                name="old-bad",
                spec=spec,
                trigger_model="m4",
                trigger_on="model_version_created",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    good = client.post("/v1/pipelines", json=_pipeline("good", "m4", cb), headers=b)
    assert good.status_code == 201, good.text
    body = _created("m4", "1")
    fired = client.post("/v1/hooks/mlflow", content=body, headers=_signed(body, "d-item4"))
    assert fired.status_code == 202, fired.text
    [job_id] = fired.json()["jobs"]
    with database.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.owner, job.source_ref) == ("team-b", {"uri": "models:/m4/1"})
    database.dispose()


def test_item13_a_metadata_callback_is_refused_when_the_pipeline_is_created(  # type: ignore[no-untyped-def]
    client, keys
) -> None:
    a = keys["a"]
    ca = _checkpoint(client, a, 43)
    url = "http://169.254.169.254/latest/meta-data/"
    refused = client.post(
        "/v1/pipelines", json=_pipeline("meta", "m13", ca, callback={"url": url}), headers=a
    )
    assert (refused.status_code, refused.json()["type"]) == (422, "outbound-refused")
    assert "callback.url" in refused.json()["detail"]
    assert client.get("/v1/pipelines/meta", headers=a).status_code == 404
    # The same answer a job gets for the same URL.
    job = client.post(
        "/v1/jobs",
        json={"source": ca, "target": {"checkpoint": ca}, "callback": {"url": url}},
        headers=a,
    )
    assert (job.status_code, job.json()["type"]) == (422, "outbound-refused")


@pytest.mark.parametrize("uri", ["http://[::1", "https://xn--/x.safetensors"])
def test_item10_unparseable_source_uris_are_refused(client, keys, uri: str) -> None:  # type: ignore[no-untyped-def]
    a = keys["a"]
    ca = _checkpoint(client, a, 44)
    r = client.post(
        "/v1/jobs", json={"source": {"uri": uri}, "target": {"checkpoint": ca}}, headers=a
    )
    assert (r.status_code, r.json()["type"]) == (422, "outbound-refused")
    assert r.json()["detail"].startswith("source.uri")


@pytest.mark.parametrize("stamp", [b"\xb2", b"9" * 5000, b"1" * 13])
def test_item11_a_malformed_mlflow_timestamp_is_401(client, stamp: bytes) -> None:  # type: ignore[no-untyped-def]
    body = _created("m11", "1")
    # The byte 0xb2 reads as '²' (latin-1): str.isdigit() says yes, int() says no.
    headers: dict[str, str | bytes] = {**_signed(body, "d-item11"), "X-MLflow-Timestamp": stamp}
    r = client.post("/v1/hooks/mlflow", content=body, headers=headers)
    assert (r.status_code, r.json()["type"]) == (401, "unauthorized")


@pytest.mark.parametrize("last", [b"\xb2", b"9" * 5000, str(2**70).encode()])
def test_item12_a_malformed_last_event_id_is_400(client, keys, last: bytes) -> None:  # type: ignore[no-untyped-def]
    a = keys["a"]
    ca = _checkpoint(client, a, 45)
    job = client.post("/v1/jobs", json={"source": ca, "target": {"checkpoint": ca}}, headers=a)
    assert job.status_code == 202, job.text
    r = client.get(
        f"/v1/jobs/{job.json()['id']}/events",
        headers={**a, "Last-Event-ID": last},
    )
    assert (r.status_code, r.json()["type"]) == (400, "bad-request")


def _rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    database = Database(settings.database_url)
    try:
        with database.transaction(write=False) as session:
            return [tuple(row) for row in session.execute(text(sql))]
    finally:
        database.dispose()


def test_item6_the_webhook_secret_is_sealed_and_never_replayed(  # type: ignore[no-untyped-def]
    client, keys, settings: Settings
) -> None:
    a, a_read = keys["a"], keys["a-read"]
    same = {"Idempotency-Key": "k6"}
    first = client.post("/v1/webhooks/secret", headers={**a, **same})
    assert (first.status_code, first.headers["cache-control"]) == (201, "no-store")
    secret = first.json()["secret"]
    assert secret.startswith("whsec_")
    stolen = client.post("/v1/webhooks/secret", headers={**a_read, **same})
    assert (stolen.status_code, stolen.json()["type"]) == (403, "forbidden")
    assert "whsec_" not in stolen.text
    # Not stored, so the write key's retry rotates again rather than replaying the secret.
    again = client.post("/v1/webhooks/secret", headers={**a, **same})
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers
    assert again.json()["secret"] not in (secret, "")
    assert not [r for r in _rows(settings, "SELECT body FROM idempotency_keys")
                if b"whsec_" in bytes(r[0] or b"")]  # fmt: skip
    [(token,)] = _rows(settings, "SELECT secret FROM webhook_secrets WHERE owner = 'team-a'")
    assert isinstance(token, str) and "whsec_" not in token
    key_file = settings.storage_dir / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox(key_file.read_bytes().strip()).open(token) == again.json()["secret"]


def test_item6_a_replay_goes_only_to_a_key_with_the_original_scopes(  # type: ignore[no-untyped-def]
    client, keys
) -> None:
    a, a_read = keys["a"], keys["a-read"]
    ca = _checkpoint(client, a, 46)
    body = {"source": ca, "target": {"checkpoint": ca}}
    made = client.post("/v1/jobs", json=body, headers={**a, "Idempotency-Key": "k6b"})
    assert made.status_code == 202
    replay = client.post("/v1/jobs", json=body, headers={**a_read, "Idempotency-Key": "k6b"})
    assert (replay.status_code, replay.json()["type"]) == (403, "forbidden")
    assert made.json()["id"] not in replay.text
    mine = client.post("/v1/jobs", json=body, headers={**a, "Idempotency-Key": "k6b"})
    assert (mine.status_code, mine.headers["idempotent-replayed"]) == (202, "true")
    assert mine.json()["id"] == made.json()["id"]


def test_item8_a_read_keys_403_is_not_replayed_to_the_write_key(client, keys) -> None:  # type: ignore[no-untyped-def]
    a, a_read = keys["a"], keys["a-read"]
    ca = _checkpoint(client, a, 47)
    body = {"source": ca, "target": {"checkpoint": ca}}
    denied = client.post("/v1/jobs", json=body, headers={**a_read, "Idempotency-Key": "k8"})
    assert (denied.status_code, denied.json()["type"]) == (403, "forbidden")
    made = client.post("/v1/jobs", json=body, headers={**a, "Idempotency-Key": "k8"})
    assert made.status_code == 202 and "idempotent-replayed" not in made.headers
    assert made.json()["status"] == "queued"


def test_item9_local_mode_honours_idempotency_keys_after_a_key_was_created(
    tmp_path: Path,
) -> None:
    local = Settings(
        database_url=f"sqlite:///{tmp_path / 'graft.db'}",
        storage_dir=tmp_path / "blobs",
        inspectors=1,
        workers=0,
        auth="local",
    )
    prepare(local)
    database = Database(local.database_url)
    with database.transaction() as session:
        create_key(session, owner="someone", scopes=["write"])
    database.dispose()
    with TestClient(create_app(local)) as client:
        ca = _checkpoint(client, {}, 48)
        body = {"source": ca, "target": {"checkpoint": ca}}
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k9"})
        second = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k9"})
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]


def test_item14_the_pages_send_a_content_security_policy_and_refuse_framing(client) -> None:  # type: ignore[no-untyped-def]
    index = client.get("/")
    assert index.status_code == 200
    assert index.headers["content-security-policy"] == APP_CSP
    assert "default-src 'self'" in APP_CSP and "frame-ancestors 'none'" in APP_CSP
    assert "unsafe" not in APP_CSP
    assert index.headers["x-frame-options"] == "DENY"
    docs = client.get("/docs")
    policy = docs.headers["content-security-policy"]
    [inline] = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "frame-ancestors 'none'" in policy and docs.headers["x-frame-options"] == "DENY"
