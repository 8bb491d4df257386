"""``fetch_url`` and the MLflow client's header and URI rules, against a real local server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.net.outbound import OutboundPolicy, OutboundRefusedError
from app.registry.errors import (
    RegistryNotFoundError,
    SourceTooLargeError,
    SourceUnavailableError,
)
from app.registry.mlflow import MlflowClient
from app.services.sources.http import fetch_url
from tests.net.servers import Server, serve

LOCAL = OutboundPolicy.from_setting("127.0.0.1:*")
PAYLOAD = os.urandom(300_000)


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        s.files["w.safetensors"] = PAYLOAD
        yield s


def test_fetch_is_bit_exact_with_sha256(server: Server, tmp_path: Path) -> None:
    got = fetch_url(
        f"{server.url}/files/w.safetensors", tmp_path / "w", max_bytes=10**6, policy=LOCAL
    )
    assert got.path.read_bytes() == PAYLOAD
    assert (got.size, got.sha256) == (len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


@pytest.mark.parametrize("route", ["files", "chunked"])
def test_size_cap_leaves_nothing(server: Server, tmp_path: Path, route: str) -> None:
    with pytest.raises(SourceTooLargeError, match="100000-byte cap") as info:
        fetch_url(
            f"{server.url}/{route}/w.safetensors", tmp_path / "w", max_bytes=100_000, policy=LOCAL
        )
    assert info.value.type == "too-large"
    assert list(tmp_path.iterdir()) == []


def test_statuses(server: Server, tmp_path: Path) -> None:
    with pytest.raises(RegistryNotFoundError, match="404"):
        fetch_url(f"{server.url}/files/missing", tmp_path / "w", max_bytes=10, policy=LOCAL)
    with pytest.raises(SourceUnavailableError, match="HTTP 503") as info:
        fetch_url(f"{server.url}/status/503", tmp_path / "w", max_bytes=10, policy=LOCAL)
    assert (info.value.type, info.value.retryable) == ("source-unavailable", True)
    with pytest.raises(SourceUnavailableError, match="HTTP 403") as info:
        fetch_url(f"{server.url}/status/403", tmp_path / "w", max_bytes=10, policy=LOCAL)
    assert info.value.retryable is False


def test_host_down_is_unavailable(tmp_path: Path) -> None:
    with serve() as gone:
        url = f"{gone.url}/files/x"
    with pytest.raises(SourceUnavailableError, match="failed") as info:
        fetch_url(url, tmp_path / "w", max_bytes=10, policy=LOCAL)
    assert info.value.retryable is True


def test_refused_before_any_connection(server: Server, tmp_path: Path) -> None:
    for url, policy in [
        (f"{server.url}/files/w.safetensors", OutboundPolicy.from_setting("*:*")),
        (f"http://localhost:{server.port}/files/w.safetensors", LOCAL),
        ("file:///etc/passwd", LOCAL),
    ]:
        with pytest.raises(OutboundRefusedError):
            fetch_url(url, tmp_path / "w", max_bytes=10**6, policy=policy)
    assert server.connections == 0


def test_redirect_off_the_list_is_refused(server: Server, tmp_path: Path) -> None:
    to = f"http://localhost:{server.port}/files/w.safetensors"
    with pytest.raises(OutboundRefusedError, match="'localhost'"):
        fetch_url(f"{server.url}/redirect?to={to}", tmp_path / "w", max_bytes=10**6, policy=LOCAL)
    assert server.hosts == [f"127.0.0.1:{server.port}"]


def test_token_goes_to_the_tracking_server_only(server: Server, tmp_path: Path) -> None:
    with serve() as elsewhere:
        elsewhere.files["w"] = b"abc"
        policy = OutboundPolicy.from_setting("127.0.0.1:*,localhost:*")
        with MlflowClient(server.url, policy=policy, token="s3cret") as client:
            client.download_artifact(
                f"{server.url}/files/w.safetensors", "", tmp_path / "a", max_bytes=10**6
            )
            client.download_artifact(
                f"http://localhost:{elsewhere.port}/files/w", "", tmp_path / "b", max_bytes=10
            )
    assert server.headers[0]["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in elsewhere.headers[0]


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "s3://bucket/model", "dbfs:/x", "runs:/abc/model"]
)
def test_artifact_uris_other_than_proxy_and_http_are_refused(server: Server, uri: str) -> None:
    with (
        MlflowClient(server.url, policy=LOCAL) as client,
        pytest.raises(OutboundRefusedError, match="only mlflow-artifacts: and http"),
    ):
        client.list_artifacts(uri)
    assert server.connections == 0


def test_artifact_urls(server: Server) -> None:
    with MlflowClient(f"{server.url}/prefix/", policy=LOCAL) as client:
        assert client.artifact_url("mlflow-artifacts:/1/r/artifacts/graft") == (
            f"{server.url}/prefix/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/graft"
        )
        assert client.artifact_url("mlflow-artifacts://art.test:5000/1/r") == (
            "http://art.test:5000/api/2.0/mlflow-artifacts/artifacts/1/r"
        )


def test_tracking_server_off_the_list_is_refused_at_once() -> None:
    with pytest.raises(OutboundRefusedError, match="not in GRAFT_OUTBOUND_ALLOW"):
        MlflowClient("https://mlflow.internal", policy=LOCAL)
