"""The API on S3 storage (a real ``rclone serve s3``): uploads land in the bucket, downloads
stream from it with Range support, and presigned downloads redirect."""

from __future__ import annotations

import hashlib
import io
import os

import httpx
import pytest
import torch

from app.config import Settings
from app.storage import S3BlobStore, open_store
from tests.api.conftest import TestClient, published_job, s3_api_settings
from tests.fixtures import tiny_state_dict
from tests.s3server import S3Server

WEIGHTS = os.urandom(70_000)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Settings:
    return s3_api_settings(tmp_path_factory, s3_server, "api-downloads")


@pytest.fixture(scope="module")
def job_id(client: TestClient, settings: Settings) -> str:
    buf = io.BytesIO()
    torch.save(tiny_state_dict(), buf)
    r = client.post("/v1/checkpoints?filename=src.pt", content=buf.getvalue())
    assert r.status_code == 201, r.text
    sha, size = open_store(settings).put_bytes(WEIGHTS)
    return published_job(settings, r.json()["id"], sha, size)


def test_uploads_land_in_the_bucket(client: TestClient, settings: Settings) -> None:
    data = io.BytesIO()
    torch.save({"w": torch.arange(6.0)}, data)
    r = client.post("/v1/checkpoints?filename=up.pt", content=data.getvalue())
    assert r.status_code == 201, r.text
    store = open_store(settings)
    assert isinstance(store, S3BlobStore)
    assert store.exists(hashlib.sha256(data.getvalue()).hexdigest())
    assert list((settings.storage_dir / "tmp").iterdir()) == []  # local staging cleaned up
    assert client.get("/readyz").status_code == 200


def test_whole_download_streams_from_s3(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/weights")
    assert (r.status_code, r.content) == (200, WEIGHTS)
    assert r.headers["etag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
    assert r.headers["accept-ranges"] == "bytes"
    # Named after the source and the target (here the same upload), not the stored file.
    assert r.headers["content-disposition"] == "attachment; filename*=utf-8''src.src.safetensors"


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [("bytes=2-5", 2, 6), ("bytes=69990-", 69990, 70000), ("bytes=-10", 69990, 70000)],
)
def test_one_range(client: TestClient, job_id: str, header: str, start: int, stop: int) -> None:
    r = client.get(f"/v1/jobs/{job_id}/weights", headers={"Range": header})
    assert (r.status_code, r.content) == (206, WEIGHTS[start:stop])
    assert r.headers["content-range"] == f"bytes {start}-{stop - 1}/70000"


def test_several_ranges_are_multipart(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/weights", headers={"Range": "bytes=0-0,100-199,150-299"})
    assert r.status_code == 206
    media_type, _, boundary = r.headers["content-type"].partition("; boundary=")
    assert media_type == "multipart/byteranges"
    assert int(r.headers["content-length"]) == len(r.content)
    parts = r.content.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--"
    bodies = [p.split(b"\r\n\r\n", 1) for p in parts[1:-1]]
    assert [b"Content-Range: bytes 0-0/70000" in h for h, _ in bodies] == [True, False]
    assert [body for _, body in bodies] == [WEIGHTS[0:1] + b"\r\n", WEIGHTS[100:300] + b"\r\n"]


def test_a_range_past_the_end_is_416(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/weights", headers={"Range": "bytes=70000-"})
    assert r.status_code == 416
    assert r.json()["type"] == "range-not-satisfiable"
    assert r.headers["content-range"] == "bytes */70000"


def test_presigned_downloads_redirect(
    client: TestClient, settings: Settings, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "presigned_downloads", True)
    r = client.get(f"/v1/jobs/{job_id}/weights", follow_redirects=False)
    assert r.status_code == 307
    fetched = httpx.get(r.headers["location"])
    assert (fetched.status_code, fetched.content) == (200, WEIGHTS)
