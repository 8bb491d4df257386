"""Uploads and checkpoint records through the real app (inspection in a child process)."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from app.config import Settings
from tests.api.conftest import TestClient, stored_blobs, temp_entries


def _model_bytes() -> bytes:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


class _Evil:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.canary}",)


def test_multipart_upload_creates_then_dedupes(client: TestClient, settings: Settings) -> None:
    data = _model_bytes()
    r = client.post("/v1/checkpoints", files={"file": ("tiny.pth", data)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["format"], body["tensors"], body["size"]) == ("torch-zip", 9, len(data))
    assert body["elements"] == (4 * 3 * 9 + 4) + (4 * 4 + 1) + (4 * 2 + 2)
    again = client.post("/v1/checkpoints?filename=other.pth", content=data)
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    tensors = client.get(f"/v1/checkpoints/{body['id']}/tensors", params={"limit": 2, "offset": 1})
    assert tensors.status_code == 200
    assert tensors.json()["count"] == 9
    assert [t["key"] for t in tensors.json()["data"]] == ["0.bias", "1.weight"]
    assert client.get(f"/v1/checkpoints/{body['id']}").json()["sha256"] == body["sha256"]
    assert any(p.name == body["sha256"] for p in stored_blobs(settings))
    assert temp_entries(settings) == []


@pytest.mark.parametrize(
    ("payload", "status", "problem"),
    [
        (b"", 422, "unreadable-checkpoint"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 422, "unreadable-checkpoint"),
    ],
    ids=["empty", "png"],
)
def test_bad_files_are_refused(
    client: TestClient, settings: Settings, payload: bytes, status: int, problem: str
) -> None:
    before = stored_blobs(settings)
    r = client.post("/v1/checkpoints", files={"file": ("model.pth", payload)})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == problem
    assert stored_blobs(settings) == before
    assert temp_entries(settings) == []


def test_pickle_that_runs_code_is_refused(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    payload = pickle.dumps({"state_dict": _Evil(canary)})
    before = stored_blobs(settings)
    r = client.post("/v1/checkpoints?filename=evil.pth", content=payload)
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "unsafe-checkpoint"
    assert not canary.exists()
    assert stored_blobs(settings) == before
    assert client.get("/healthz").json() == {"status": "ok"}


def test_too_large_by_content_length_and_by_stream(client: TestClient, settings: Settings) -> None:
    big = b"\x00" * (settings.max_upload_bytes + 1)
    r = client.post("/v1/checkpoints?filename=big.bin", content=big)
    assert r.status_code == 413
    assert r.json()["type"] == "too-large"

    def chunks():  # no Content-Length: the cap is enforced while streaming
        for _ in range(settings.max_upload_bytes // 65536 + 2):
            yield b"\x00" * 65536

    r = client.post("/v1/checkpoints?filename=big.bin", content=chunks())
    assert r.status_code == 413
    assert r.json()["type"] == "too-large"
    assert temp_entries(settings) == []


def test_unknown_checkpoint_is_problem_json(client: TestClient) -> None:
    r = client.get("/v1/checkpoints/nope")
    assert r.status_code == 404
    assert r.json()["type"] == "not-found"
    assert client.delete("/v1/checkpoints/nope").status_code == 404


def test_form_without_file_part(client: TestClient) -> None:
    r = client.post("/v1/checkpoints", files={"other": ("x.pth", b"abc")})
    assert r.status_code == 400
    assert r.json()["type"] == "bad-request"


def test_readyz(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "storage": "ok"}
