"""Resumable uploads with the S3 blob store (``rclone serve s3``): parts are staged locally
(the sandboxed inspection reads a local file) and each goes to the bucket as an
``UploadPart`` as it is committed; the last one completes the multipart upload."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pytest
import torch

from app.config import Settings
from app.storage import open_store
from tests.api.conftest import TestClient, s3_api_settings
from tests.api.test_tus_uploads import TUS, create, metadata, patch, saved, upload_in_parts
from tests.s3server import S3Server


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Settings:
    return s3_api_settings(tmp_path_factory, s3_server, "tus-uploads")


def test_a_tus_upload_lands_in_the_bucket(client: TestClient, settings: Settings) -> None:
    data = saved(21)
    url, last = upload_in_parts(client, data, 3, filename="s3.pth")
    record = client.get(url).json()["checkpoint"]
    digest = hashlib.sha256(data).hexdigest()
    assert record["sha256"] == digest and last.headers["Graft-Checkpoint"] == record["id"]
    store = open_store(settings)
    assert store.exists(digest)
    assert b"".join(store.iter_range(digest, 0, len(data))) == data
    # Nothing of the upload's bytes is left in local staging.
    folder = store.scratch.root / "tus" / url.rsplit("/", 1)[-1]
    assert not (folder / "data").exists()


def big_checkpoint() -> bytes:
    """A real torch checkpoint of ~12 MiB: two tus parts of S3's smallest part size or more."""
    buf = io.BytesIO()
    generator = torch.Generator().manual_seed(3)
    torch.save({"w": torch.randn(3, 1024, 1024, generator=generator)}, buf)
    return buf.getvalue()


def parts_of(settings: Settings, url: str) -> dict[str, Any]:
    """The upload's multipart upload in the bucket, as its state file records it."""
    folder = open_store(settings).scratch.root / "tus" / url.rsplit("/", 1)[-1]
    parts: dict[str, Any] = json.loads((folder / "info.json").read_text())["parts"]
    return parts


def test_each_part_goes_to_the_bucket_as_it_arrives(
    client: TestClient, settings: Settings, s3_server: S3Server
) -> None:
    data = big_checkpoint()
    half = len(data) // 2
    url = create(client, len(data), {"Upload-Metadata": metadata(filename="big.pt")})
    assert patch(client, url, 0, data[:half]).status_code == 204
    # The first PATCH is already an UploadPart of the bucket's multipart upload.
    parts = parts_of(settings, url)
    assert [(n, size) for n, _, size in parts["parts"]] == [(1, half)] and parts["sent"] == half
    s3 = s3_server.client()
    bucket = settings.storage_url.removeprefix("s3://").split("/")[0]
    listed = s3.list_parts(Bucket=bucket, Key=parts["key"], UploadId=parts["upload_id"])
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, half)]

    last = patch(client, url, half, data[half:])
    assert last.status_code == 204, last.text
    record = client.get(url).json()["checkpoint"]
    digest = hashlib.sha256(data).hexdigest()
    assert record["sha256"] == digest and last.headers["Graft-Checkpoint"] == record["id"]
    store = open_store(settings)
    assert b"".join(store.iter_range(digest, 0, len(data))) == data
    # CompleteMultipartUpload made the blob (the upload is no more, nor its key), and the
    # local bytes are gone.
    with pytest.raises(Exception, match="NoSuchUpload"):
        s3.list_parts(Bucket=bucket, Key=parts["key"], UploadId=parts["upload_id"])
    with pytest.raises(Exception, match=r"404|NoSuchKey|Not Found"):
        s3.head_object(Bucket=bucket, Key=parts["key"])
    folder = store.scratch.root / "tus" / url.rsplit("/", 1)[-1]
    assert not (folder / "data").exists()


def test_termination_aborts_the_parts_in_the_bucket(
    client: TestClient, settings: Settings, s3_server: S3Server
) -> None:
    data = big_checkpoint()
    url = create(client, len(data) + 1)
    assert patch(client, url, 0, data).status_code == 204
    parts = parts_of(settings, url)
    bucket = settings.storage_url.removeprefix("s3://").split("/")[0]
    s3 = s3_server.client()
    assert s3.list_parts(Bucket=bucket, Key=parts["key"], UploadId=parts["upload_id"])["Parts"]
    assert client.delete(url, headers=TUS).status_code == 204
    with pytest.raises(Exception, match="NoSuchUpload"):
        s3.list_parts(Bucket=bucket, Key=parts["key"], UploadId=parts["upload_id"])
