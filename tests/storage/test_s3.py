"""What only the S3 store promises: its key layout, verified publication, temp-key sweeps,
presigned URLs. Against a real S3 server (``rclone serve s3``)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import httpx
import pytest

from app.storage import BlobIntegrityError, S3BlobStore
from tests.s3server import S3Server
from tests.storage.conftest import s3_store


def _keys(server: S3Server, store: S3BlobStore) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path) -> S3BlobStore:
    return s3_store(s3_server, tmp_path / "scratch")


def test_keys_are_content_addressed_under_the_prefix(s3_server: S3Server, store) -> None:
    sha, _ = store.put_bytes(b"abc")
    assert _keys(s3_server, store) == [f"graft/blobs-test/blobs/{sha[:2]}/{sha[2:]}"]
    head = s3_server.client().head_object(Bucket=store.bucket, Key=store.key(sha))
    # Header names are case-insensitive; rclone answers "Sha256".
    assert {k.lower(): v for k, v in head["Metadata"].items()}["sha256"] == sha


def test_a_wrong_digest_publishes_nothing(s3_server: S3Server, store, tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(b"not what the digest says")
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(BlobIntegrityError, match="hashes to"):
        store.publish(staged, wrong)
    assert _keys(s3_server, store) == []  # neither the content key nor a temp key
    assert not store.exists(wrong)


def test_temp_keys_of_gone_writers_are_swept(
    s3_server: S3Server, tmp_path: Path, dead_pid: int
) -> None:
    store = s3_store(s3_server, tmp_path / "scratch", temp_grace_seconds=3600.0)
    client, tmp = s3_server.client(), f"{store.prefix}tmp/"
    host = store._host
    dead_here = f"{tmp}{host}-{dead_pid}-aaaa"
    live_here = f"{tmp}{host}-{os.getpid()}-bbbb"
    other_host = f"{tmp}elsewhere-{dead_pid}-cccc"  # its pid means nothing here
    for key in (dead_here, live_here, other_host):
        client.put_object(Bucket=store.bucket, Key=key, Body=b"partial")
    assert store.cleanup_orphans() == 1
    assert _keys(s3_server, store) == sorted([live_here, other_host])
    # Once past the grace period, any host's temp keys go (here: a grace of 0).
    swept = s3_store(s3_server, tmp_path / "scratch2", temp_grace_seconds=0.0)
    swept_keys = [f"{swept.prefix}tmp/elsewhere-1-dddd", f"{swept.prefix}blobs/not/a-temp"]
    for key in swept_keys:
        client.put_object(Bucket=swept.bucket, Key=key, Body=b"x")
    assert swept.cleanup_orphans() == 1
    assert _keys(s3_server, swept) == [swept_keys[1]]


def test_presigned_url_serves_the_blob(store: S3BlobStore) -> None:
    data = os.urandom(5000)
    sha, _ = store.put_bytes(data)
    url = store.presigned_url(sha, filename="model.safetensors", media_type="application/x-st")
    assert url is not None
    r = httpx.get(url)
    assert (r.status_code, r.content) == (200, data)
    assert r.headers["content-type"] == "application/x-st"
    assert "model.safetensors" in r.headers["content-disposition"]
    assert httpx.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403


def test_check_names_a_missing_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3_server, tmp_path / "scratch", bucket="no-such-bucket")
    with pytest.raises(OSError, match="s3://no-such-bucket"):
        store.check()


def test_check_fails_when_the_server_is_down(s3_server: S3Server, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = s3_store(s3_server, tmp_path / "scratch", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(OSError, match="s3://"):
        store.check()


def test_wrong_credentials_are_refused(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3_server, tmp_path / "scratch", secret_access_key="wrong")
    with pytest.raises(OSError, match=r"403|Forbidden|SignatureDoesNotMatch"):
        store.check()
