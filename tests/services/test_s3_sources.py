"""``s3://`` sources against a real S3 server (``rclone serve s3``, which requires a signed
request): only allowed buckets, only the configured credentials, never ambient ones (issue 23
item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.registry.errors import SourceUnavailableError
from app.services.sources.s3 import S3SourceConfig, fetch_s3
from tests.s3server import S3Server

BODY = b"weights" * 100


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    name = s3_server.create_bucket("sources-allowed")
    s3_server.client().put_object(Bucket=name, Key="team/w.bin", Body=BODY)
    return name


def _config(s3_server: S3Server, *, signed: bool, allowed: str) -> S3SourceConfig:
    return S3SourceConfig(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key if signed else None,
        secret_access_key=s3_server.secret_key if signed else None,
        allowed_buckets=frozenset({allowed}),
    )


def test_configured_credentials_read_an_allowed_bucket(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    config = _config(s3_server, signed=True, allowed=bucket)
    got = fetch_s3(f"s3://{bucket}/team/w.bin", tmp_path, config=config, max_bytes=10**6)
    assert (got.path.read_bytes(), got.size) == (BODY, len(BODY))


def test_a_bucket_off_the_list_is_refused_before_any_request(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    config = _config(s3_server, signed=True, allowed="another-bucket")
    with pytest.raises(PermissionError, match="not in GRAFT_S3_SOURCE_ALLOW"):
        fetch_s3(f"s3://{bucket}/team/w.bin", tmp_path, config=config, max_bytes=10**6)


def test_ambient_credentials_are_never_used(
    s3_server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's own credentials, everywhere boto3 would look for them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    shared = tmp_path / "credentials"
    shared.write_text(
        f"[default]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    config = _config(s3_server, signed=False, allowed=bucket)
    # Sent unsigned: the server, which wants a signature, refuses it (rclone: 400
    # UnsupportedAlgorithm); with the ambient keys it would have answered the object.
    with pytest.raises(SourceUnavailableError, match=r"S3 answered 4\d\d"):
        fetch_s3(f"s3://{bucket}/team/w.bin", tmp_path, config=config, max_bytes=10**6)
    assert not list(tmp_path.glob("w.bin*"))
