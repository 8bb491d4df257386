"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here).

What a `docker compose config` would catch for us and what the scale-out contract needs:
the profiles, the services each profile brings, the variables the services set (each one a
setting Graft reads), the GPU reservation, and the two torch builds kept apart.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from app.config import Settings
from tests.fixtures import REPO_ROOT

SCALE = {"rabbitmq", "postgres", "s3", "api", "worker-cpu", "worker-gpu"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def _graft_variables() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= {str(a).upper() for a in getattr(alias, "choices", [])}
        names.add(f"GRAFT_{name.upper()}")
    return names


def test_the_default_service_needs_no_profile(compose: dict[str, Any]) -> None:
    graft = compose["services"]["graft"]
    assert "profiles" not in graft
    assert graft["environment"]["GRAFT_DATABASE_URL"].endswith("sqlite:////data/graft.db}")
    unprofiled = {n for n, s in compose["services"].items() if "profiles" not in s}
    assert unprofiled == {"graft"}


def test_the_scale_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {n for n, s in services.items() if "scale" in s.get("profiles", [])} == SCALE
    for name in ("api", "worker-cpu", "worker-gpu"):
        env = services[name]["environment"]
        assert env["GRAFT_EXECUTOR"] == "celery"
        assert env["GRAFT_BROKER_URL"].startswith("amqp://")
        assert env["GRAFT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["GRAFT_STORAGE_URL"].startswith("s3://")
        assert env["GRAFT_S3_ENDPOINT_URL"] == "http://s3:9000"
        unknown = {k for k in env if k.startswith(("GRAFT_", "AWS_"))} - _graft_variables()
        assert unknown == set(), f"{name} sets variables Graft does not read"
        assert set(services[name]["depends_on"]) == {"rabbitmq", "postgres", "s3"}
    assert services["api"]["environment"]["GRAFT_WORKERS"] == "0"
    assert services["worker-cpu"]["command"][:6] == [
        "graft", "worker", "--executor", "celery", "--queues", "cpu",
    ]  # fmt: skip
    gpu = services["worker-gpu"]
    assert gpu["command"][4:] == ["--queues", "gpu", "--device", "cuda:0"]
    assert gpu["build"]["target"] == "worker-gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # The broker lets a job run longer than Graft's own hard limit before it takes it back.
    erl = services["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    consumer_timeout_ms = int(re.search(r"consumer_timeout (\d+)", erl).group(1))  # type: ignore[union-attr]
    limit = services["api"]["environment"]["GRAFT_TASK_TIME_LIMIT_SECONDS"]
    limit_s = int(re.search(r":-(\d+)\}", limit).group(1))  # type: ignore[union-attr]
    assert consumer_timeout_ms > limit_s * 1000


def test_the_dockerfile_keeps_the_torch_builds_apart() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    assert stages == ["base", "worker-gpu", "cpu"]  # the last stage is the default image
    gpu, cpu = text.split("FROM base AS worker-gpu")[1].split("FROM base AS cpu")
    assert "download.pytorch.org/whl/cu" in gpu and "whl/cpu" not in gpu
    assert "download.pytorch.org/whl/cpu" in cpu and "whl/cu1" not in cpu
    for stage in (gpu, cpu):
        assert re.search(r"pip install torch==2\.13\.0 ", stage)
        assert ".[postgres,s3,celery]" in stage
