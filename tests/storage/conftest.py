"""One contract, two stores: the ``store`` fixture is a file store and an S3 store (a fresh
bucket on the session's real ``rclone serve s3``)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app.storage import BlobStore, FileBlobStore, S3BlobStore, S3Config
from tests.s3server import S3Server

# S3's smallest part: a 20 MB blob goes up in 4 parts.
PART_SIZE = 5 * 1024 * 1024


def s3_store(server: S3Server, scratch: Path, **config: object) -> S3BlobStore:
    """An S3 store on a new bucket of ``server``, under a prefix."""
    bucket = server.create_bucket(f"b{uuid.uuid4().hex[:12]}")
    options = S3Config(
        bucket=bucket,
        prefix="graft/blobs-test",
        endpoint_url=server.endpoint_url,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        part_size=PART_SIZE,
    )
    store = S3BlobStore(dataclasses.replace(options, **config), scratch=scratch)
    store.ensure()
    return store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        file_store = FileBlobStore(tmp_path / "blobs")
        file_store.ensure()
        return file_store
    return s3_store(request.getfixturevalue("s3_server"), tmp_path / "scratch")


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)
