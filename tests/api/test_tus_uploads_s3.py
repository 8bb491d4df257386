"""Resumable uploads with the S3 blob store (``rclone serve s3``): parts are staged locally
(the sandboxed inspection reads a local file), the finished file is published to the bucket."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from app.config import Settings
from app.services.bootstrap import prepare
from app.storage import open_store
from tests.api.conftest import TestClient, create_app
from tests.api.test_tus_uploads import saved, upload_in_parts
from tests.s3server import S3Server


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Settings:
    root = tmp_path_factory.mktemp("graft-tus-s3")
    bucket = s3_server.create_bucket("tus-uploads")
    return Settings(
        database_url=f"sqlite:///{root / 'graft.db'}",
        storage_dir=root / "local",
        storage_url=f"s3://{bucket}/graft",
        s3_endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        inspectors=1,
        workers=0,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    prepare(settings)
    with TestClient(create_app(settings)) as client:
        yield client


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
