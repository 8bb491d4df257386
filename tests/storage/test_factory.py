"""GRAFT_STORAGE_URL picks the store; the rest of the settings configure it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.storage import FileBlobStore, S3BlobStore, open_store
from tests.s3server import S3Server


def test_the_default_is_the_file_store_at_storage_dir(tmp_path: Path) -> None:
    store = open_store(Settings(storage_dir=tmp_path / "blobs"))
    assert isinstance(store, FileBlobStore)
    assert store.root == tmp_path / "blobs"


def test_a_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/my%20blobs")
    assert isinstance(store, FileBlobStore)
    assert store.root == tmp_path / "my blobs"


@pytest.mark.parametrize("url", ["file://relative/path", "s3://", "s3:///prefix-only"])
def test_urls_the_factory_cannot_use(url: str) -> None:
    with pytest.raises(ValueError, match="GRAFT_STORAGE_URL must be"):
        open_store(url)


def test_other_schemes_fail_when_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_STORAGE_URL", "gs://bucket/prefix")
    with pytest.raises(ValidationError, match="storage_url"):
        Settings()


def test_an_s3_url_with_settings_from_the_environment(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.create_bucket("from-env")
    monkeypatch.setenv("GRAFT_STORAGE_URL", f"s3://{bucket}/deploy/a/")
    monkeypatch.setenv("GRAFT_STORAGE_DIR", str(tmp_path / "local"))
    monkeypatch.setenv("GRAFT_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    settings = Settings()
    assert s3_server.secret_key not in repr(settings)
    store = open_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == (bucket, "deploy/a/")
    assert store.scratch.root == tmp_path / "local" / "tmp"
    store.ensure()
    store.check()
    sha, _ = store.put_bytes(b"through the environment")
    assert (s3_server.root / bucket / "deploy" / "a" / "blobs" / sha[:2] / sha[2:]).is_file()
