"""GET /v1/architectures: the engine's registry, asked of an inspection child."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.engine.architectures import parse_architectures
from app.services.bootstrap import prepare


def test_the_builtin_architectures_are_listed_with_typed_kwargs(client: TestClient) -> None:
    r = client.get("/v1/architectures")
    assert r.status_code == 200
    body = r.json()
    by_name = {a["name"]: a for a in body["data"]}
    assert body["count"] == len(body["data"])
    assert {"graft_bert", "graft_mobilenet", "graft_resnet", "graft_vit"} <= set(by_name)
    resnet = by_name["graft_resnet"]
    assert resnet["origin"] == "builtin"
    assert resnet["kwargs"] == {
        "depth": {"type": "int", "default": 50, "required": False},
        "num_classes": {"type": "int", "default": 1000, "required": False},
        "in_chans": {"type": "int", "default": 3, "required": False},
        "img_size": {"type": "int", "default": 224, "required": False},
    }
    assert (resnet["available"], resnet["error"]) == (True, None)
    assert resnet["description"].startswith("torchvision's ``resnet{depth}``")


def test_the_architectures_setting_adds_to_the_listing(settings: Settings, tmp_path: Path) -> None:
    extra = settings.model_copy(
        update={
            "architectures": tuple(
                parse_architectures("tiny_b=tests.engine.test_architectures:TinyB,gone=no_mod:f")
            ),
            "database_url": f"sqlite:///{tmp_path / 'graft.db'}",
            "storage_dir": tmp_path / "blobs",
        }
    )
    prepare(extra)
    with TestClient(create_app(extra)) as client:
        listed = {a["name"]: a for a in client.get("/v1/architectures").json()["data"]}
    assert listed["tiny_b"] == {
        "name": "tiny_b",
        "kwargs": {"num_classes": {"type": "int", "default": 4, "required": False}},
        "description": "The same function as :class:`TinyA`, named ``stem.{conv,bn}`` and "
        "``classifier``.",
        "origin": "setting",
        "available": True,
        "error": None,
    }
    # A plug-in whose import fails is listed as unavailable with its reason, not a 500.
    assert listed["gone"] == {
        "name": "gone", "kwargs": {}, "description": None, "origin": "setting",
        "available": False, "error": "ModuleNotFoundError: No module named 'no_mod'",
    }  # fmt: skip


def test_an_architecture_job_is_checked_before_it_is_queued(
    client: TestClient, tmp_path: Path
) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    source = client.post(
        "/v1/checkpoints", params={"filename": "src.pth"}, content=buf.getvalue()
    ).json()["id"]
    before = client.get("/v1/jobs").json()["count"]

    def job(target: dict[str, object]) -> tuple[int, dict[str, object]]:
        r = client.post("/v1/jobs", json={"source": source, "target": target})
        return r.status_code, r.json()

    status, body = job({"architecture": "graft_nope", "kwargs": {}})
    assert (status, body["type"]) == (422, "invalid-target")
    assert "graft_nope" in str(body["detail"])
    status, body = job({"architecture": "graft_resnet", "kwargs": {"widht": 8}})
    assert (status, body["type"]) == (422, "invalid-target")
    assert "'widht'" in str(body["detail"])
    status, body = job({"architecture": "graft_resnet", "kwargs": {"depth": "18"}})
    assert (status, body["type"]) == (422, "invalid-target")
    assert client.get("/v1/jobs").json()["count"] == before  # nothing was queued
    status, body = job({"architecture": "graft_resnet", "kwargs": {"depth": 18}})
    assert status == 202
