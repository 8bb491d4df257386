"""The MLflow client against a real ``mlflow server`` (SQLite backend, proxied artifacts).

The server comes from its own venv (``make mlflow-venv``: ``$GRAFT_TEST_MLFLOW_VENV``, by
default ``~/.cache/graft/mlflow-3.17.2``), never from Graft's. One server serves the module.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.net.outbound import OutboundPolicy, OutboundRefusedError
from app.registry.errors import (
    InvalidReferenceError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
)
from app.registry.mlflow import MlflowClient
from app.registry.mlflow_publish import VersionRequest, find_job_version, register_version
from tests.mlflowserver import free_port, running_mlflow

logger = logging.getLogger(__name__)

POLICY = OutboundPolicy.from_setting("127.0.0.1:*")
SOURCE_SHA = "ab" * 32


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture
def client(mlflow_url: str) -> Iterator[MlflowClient]:
    with MlflowClient(mlflow_url, policy=POLICY) as c:
        yield c


def _result(folder: Path, *names: str) -> dict[str, Path]:
    """A tiny real result: safetensors weights, a report and a manifest."""
    folder.mkdir(parents=True)
    paths = {}
    for i, name in enumerate(names):
        path = folder / name
        save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) + i}, path)
        paths[name] = path
    (folder / "report.json").write_text(json.dumps({"schema": "graft.report/v1", "n": 1}))
    (folder / "manifest.json").write_text(json.dumps({"files": list(names)}))
    return paths


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_register_then_fetch_by_version_and_alias(client: MlflowClient, tmp_path: Path) -> None:
    weights = _result(tmp_path / "out", "model.safetensors")["model.safetensors"]
    report = tmp_path / "out" / "report.json"
    done = register_version(
        client,
        VersionRequest(
            name="tiny",
            job_id="job-1",
            weights=[weights],
            report=report,
            manifest=tmp_path / "out" / "manifest.json",
            source_sha256=SOURCE_SHA,
            alias="prod",
            tags={"team": "vision"},
        ),
    )
    assert (done.version, done.created, done.uri) == ("1", True, "models:/tiny/1")

    version = client.get_model_version("tiny", "1")
    assert version.tags == {
        "graft.job_id": "job-1",
        "graft.source_sha256": SOURCE_SHA,
        "graft.report_sha256": _sha(report),
        "team": "vision",
    }
    assert version.aliases == ("prod",)
    artifacts = client.list_artifacts(client.get_download_uri("tiny", "1"))
    assert [(f.path, f.size) for f in artifacts] == [
        ("manifest.json", (tmp_path / "out" / "manifest.json").stat().st_size),
        ("model.safetensors", weights.stat().st_size),
        ("report.json", report.stat().st_size),
    ]

    for uri, folder in [("models:/tiny/1", "by-version"), ("models:/tiny@prod", "by-alias")]:
        (tmp_path / folder).mkdir()
        fetched = client.fetch_model(uri, tmp_path / folder, max_bytes=10**6)
        assert fetched.version.version == "1"
        [got] = fetched.files
        assert got.path == tmp_path / folder / "model.safetensors"
        assert got.path.read_bytes() == weights.read_bytes()
        assert got.sha256 == _sha(weights)
        assert torch.equal(load_file(got.path)["w"], load_file(weights)["w"])


def test_retry_never_registers_twice_and_alias_moves(client: MlflowClient, tmp_path: Path) -> None:
    paths = _result(tmp_path / "out", "model.safetensors")
    kwargs = {
        "name": "retried",
        "weights": [paths["model.safetensors"]],
        "report": tmp_path / "out" / "report.json",
        "manifest": tmp_path / "out" / "manifest.json",
        "source_sha256": SOURCE_SHA,
        "alias": "champion",
    }
    first = register_version(client, VersionRequest(job_id="job-a", **kwargs))  # type: ignore[arg-type]
    again = register_version(client, VersionRequest(job_id="job-a", **kwargs))  # type: ignore[arg-type]
    assert (first.version, first.created) == ("1", True)
    assert (again.version, again.created, again.run_id) == ("1", False, first.run_id)
    listed = client.call("GET", "model-versions/search", params={"filter": "name='retried'"})
    assert len(listed["model_versions"]) == 1

    other = register_version(client, VersionRequest(job_id="job-b", **kwargs))  # type: ignore[arg-type]
    assert (other.version, other.created) == ("2", True)
    assert client.resolve("models:/retried@champion").version == "2"
    found = find_job_version(client, name="retried", job_id="job-a")
    assert found is not None and found.version == "1"


def test_sharded_set_round_trip(client: MlflowClient, tmp_path: Path) -> None:
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    paths = _result(tmp_path / "out", *names)
    index = tmp_path / "out" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": names[0]}}))
    register_version(
        client,
        VersionRequest(
            name="sharded",
            job_id="job-s",
            weights=[index, *paths.values()],
            report=tmp_path / "out" / "report.json",
            manifest=tmp_path / "out" / "manifest.json",
            source_sha256=SOURCE_SHA,
        ),
    )
    (tmp_path / "in").mkdir()
    fetched = client.fetch_model("models:/sharded/1", tmp_path / "in", max_bytes=10**6)
    assert [f.path.name for f in fetched.files] == [index.name, *names]
    for f in fetched.files:
        assert f.path.read_bytes() == (tmp_path / "out" / f.path.name).read_bytes()


def test_several_checkpoints_need_a_path(client: MlflowClient, tmp_path: Path) -> None:
    paths = _result(tmp_path / "out", "a.safetensors", "b.safetensors")
    register_version(
        client,
        VersionRequest(
            name="two",
            job_id="job-2",
            weights=list(paths.values()),
            report=tmp_path / "out" / "report.json",
            manifest=tmp_path / "out" / "manifest.json",
            source_sha256=SOURCE_SHA,
        ),
    )
    (tmp_path / "in").mkdir()
    with pytest.raises(InvalidReferenceError, match="holds 2 checkpoints"):
        client.fetch_model("models:/two/1", tmp_path / "in", max_bytes=10**6)
    fetched = client.fetch_model(
        "models:/two/1", tmp_path / "in", max_bytes=10**6, path="b.safetensors"
    )
    assert fetched.files[0].sha256 == _sha(paths["b.safetensors"])


@pytest.mark.parametrize("alias", ["latest", "v3"])
def test_reserved_aliases_are_refused(client: MlflowClient, tmp_path: Path, alias: str) -> None:
    paths = _result(tmp_path / "out", "model.safetensors")
    with pytest.raises(InvalidReferenceError, match="reserved by MLflow"):
        register_version(
            client,
            VersionRequest(
                name="reserved",
                job_id="job-r",
                weights=list(paths.values()),
                report=tmp_path / "out" / "report.json",
                manifest=tmp_path / "out" / "manifest.json",
                source_sha256=SOURCE_SHA,
                alias=alias,
            ),
        )
    assert find_job_version(client, name="reserved", job_id="job-r") is None
    # MLflow itself refuses them too; its message comes through as a registry error.
    with pytest.raises(RegistryError, match="reserved"):
        client.call(
            "POST", "registered-models/alias", json={"name": "tiny", "alias": alias, "version": "1"}
        )


def test_not_found(client: MlflowClient, tmp_path: Path) -> None:
    with pytest.raises(RegistryNotFoundError, match="not found") as info:
        client.fetch_model("models:/nope/1", tmp_path, max_bytes=10)
    assert info.value.type == "not-found"
    with pytest.raises(RegistryNotFoundError):
        client.resolve("models:/nope@prod")


def test_server_down_is_registry_unavailable(tmp_path: Path) -> None:
    down = MlflowClient(f"http://127.0.0.1:{free_port()}", policy=POLICY, timeout=5)
    with down, pytest.raises(RegistryUnavailableError, match="cannot reach MLflow") as info:
        down.fetch_model("models:/tiny/1", tmp_path, max_bytes=10)
    assert (info.value.type, info.value.retryable) == ("registry-unavailable", True)


def test_disallowed_host_is_refused_before_any_connection(mlflow_url: str) -> None:
    # "localhost" is the same server, but only 127.0.0.1 is listed.
    port = httpx.URL(mlflow_url).port
    with pytest.raises(OutboundRefusedError, match="'localhost' is not in") as info:
        MlflowClient(f"http://localhost:{port}", policy=POLICY)
    assert info.value.type == "outbound-refused"
    # Admitted by "*" but resolving to loopback: refused at connection time, before connecting.
    anywhere = MlflowClient(f"https://localhost:{port}", policy=OutboundPolicy.from_setting("*:*"))
    with anywhere, pytest.raises(OutboundRefusedError, match="loopback"):
        anywhere.resolve("models:/tiny/1")


def test_a_failure_between_the_version_and_the_alias_never_makes_a_second_version(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _result(tmp_path / "out", "model.safetensors")
    request = VersionRequest(
        name="half-done",
        job_id="job-h",
        weights=[paths["model.safetensors"]],
        report=tmp_path / "out" / "report.json",
        manifest=tmp_path / "out" / "manifest.json",
        source_sha256=SOURCE_SHA,
        alias="champion",
    )
    real = client.call

    def alias_call_fails(method: str, path: str, **kwargs: object) -> dict[str, object]:
        if path == "registered-models/alias":  # the version exists; the alias never moves
            raise RegistryUnavailableError("connection dropped (injected)")
        return real(method, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "call", alias_call_fails)
    with pytest.raises(RegistryUnavailableError):
        register_version(client, request)
    monkeypatch.setattr(client, "call", real)
    again = register_version(client, request)  # the retry
    assert (again.version, again.created) == ("1", False)
    listed = client.call("GET", "model-versions/search", params={"filter": "name='half-done'"})
    assert len(listed["model_versions"]) == 1
    assert client.resolve("models:/half-done@champion").version == "1"


def test_the_attestation_is_logged_beside_the_weights_and_never_fetched_as_one(
    client: MlflowClient, tmp_path: Path
) -> None:
    """SPEC §3.3: the job's attestation travels with the registered weights; a later
    ``models:/`` source still fetches the weights alone."""
    weights = _result(tmp_path / "out", "model.safetensors")["model.safetensors"]
    attestation = tmp_path / "out" / "model.safetensors.intoto.json"
    attestation.write_text(json.dumps({"_type": "https://in-toto.io/Statement/v1"}))
    register_version(
        client,
        VersionRequest(
            name="attested",
            job_id="job-attested",
            weights=[weights],
            report=tmp_path / "out" / "report.json",
            manifest=tmp_path / "out" / "manifest.json",
            source_sha256=SOURCE_SHA,
            attestation=attestation,
        ),
    )
    artifacts = client.list_artifacts(client.get_download_uri("attested", "1"))
    assert [f.path for f in artifacts] == [
        "manifest.json",
        "model.safetensors",
        "model.safetensors.intoto.json",
        "report.json",
    ]
    (tmp_path / "fetched").mkdir()
    fetched = client.fetch_model("models:/attested/1", tmp_path / "fetched", max_bytes=10**6)
    assert [f.path.name for f in fetched.files] == ["model.safetensors"]
