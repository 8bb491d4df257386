"""A registration retry with the Celery executor (real RabbitMQ, PostgreSQL and MLflow): the
API sends the job's id to a worker, which claims the retry and registers exactly one version.
MLflow is unreachable at first (nothing listens where the stack looks for it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.net.outbound import OutboundPolicy
from app.registry.mlflow import MlflowClient
from tests.e2e.helpers import net, saved, until
from tests.e2e.test_registry import _Forwarder, _tag
from tests.executors.celery_stack import celery_stack, unreachable_reason
from tests.mlflowserver import free_port, running_mlflow
from tests.parts import require_part

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _when(job: dict[str, Any], **expected: Any) -> dict[str, Any] | None:
    return job if all(job[k] == v for k, v in expected.items()) else None


def test_a_registry_retry_runs_in_a_celery_worker(mlflow_url: str, tmp_path: Path) -> None:
    reason = unreachable_reason()
    if reason:
        require_part("the Celery stack (RabbitMQ, PostgreSQL)", reason)
    port = free_port()
    forwarder: _Forwarder | None = None
    with celery_stack(
        tmp_path,
        None,
        queues=("cpu",),
        stage_delay="0",
        GRAFT_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
        GRAFT_OUTBOUND_ALLOW="mlflow",
    ) as stack:
        try:
            with stack.server.client() as client:
                ids = [
                    client.post(f"/v1/checkpoints?filename=s{s}.pth", content=saved(net(s)))
                    for s in (1, 2)
                ]
                register = {"registry": "mlflow", "name": "celery-retry"}
                body = {"source": ids[0].json()["id"],
                        "target": {"checkpoint": ids[1].json()["id"]},
                        "output": {"register": register}}  # fmt: skip
                job_id = client.post("/v1/jobs", json=body).json()["id"]

                def job() -> dict[str, Any]:
                    got: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                    return got

                first = until(lambda: _when(job(), status="succeeded"), 120)
                assert first["result"]["registry"]["error"]["type"] == "registry-unavailable"

                forwarder = _Forwarder(port, mlflow_url)
                asked = client.post(f"/v1/jobs/{job_id}/registry-retry")
                assert asked.status_code == 202, asked.text
                done = until(lambda: _when(job(), stage=None), 120)
                assert done["result"]["registry"] == {
                    "uri": "models:/celery-retry/1", "version": "1", "error": None,
                }  # fmt: skip
                assert client.post(f"/v1/jobs/{job_id}/registry-retry").status_code == 200
        finally:
            if forwarder is not None:
                forwarder.close()
    with MlflowClient(mlflow_url, policy=OutboundPolicy.from_setting("127.0.0.1:*")) as registry:
        found = registry.call(
            "GET", "model-versions/search", params={"filter": "name='celery-retry'"}
        )
    versions = found.get("model_versions", [])
    assert [(v["version"], _tag(v, "graft.job_id")) for v in versions] == [("1", job_id)]
