"""Resumable uploads with the S3 blob store (``rclone serve s3``): parts are staged locally
(the sandboxed inspection reads a local file), the finished file is published to the bucket."""

from __future__ import annotations

import hashlib

import pytest

from app.config import Settings
from app.storage import open_store
from tests.api.conftest import TestClient, s3_api_settings
from tests.api.test_tus_uploads import saved, upload_in_parts
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
