"""GET /v1/recipes: the built-in recipes (SPEC §2.2), and a job naming one as builtin:NAME."""

from __future__ import annotations

import io

import pytest
import torch
import yaml
from torch import nn

from app.config import Settings
from app.engine.align import list_builtins
from app.engine.recipe import load_recipe
from tests.api.conftest import TestClient


def test_recipes_lists_every_builtin(client: TestClient) -> None:
    r = client.get("/v1/recipes")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = [
        {"name": b.name, "version": b.version, "description": b.description,
         "use": f"builtin:{b.name}"}
        for b in list_builtins()
    ]  # fmt: skip
    assert body == {"data": expected, "count": len(expected)}
    # Named here, not counted from list_builtins (which the route itself calls).
    names = {item["name"] for item in body["data"]}
    assert {"torchvision-resnet-to-timm", "megatron-gpt-llama3-8b-to-transformers"} <= names


@pytest.mark.parametrize("name", ["torchvision-resnet-to-timm", "builtin:gpt2-to-nanogpt"])
def test_one_recipe_is_its_file(client: TestClient, name: str) -> None:
    r = client.get(f"/v1/recipes/{name}")
    assert r.status_code == 200, r.text
    body = r.json()
    bare = name.removeprefix("builtin:")
    (builtin,) = [b for b in list_builtins() if b.name == bare]
    assert (body["name"], body["version"], body["use"]) == (
        bare,
        builtin.version,
        f"builtin:{bare}",
    )
    assert body["recipe"] == yaml.safe_load(builtin.path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["no-such-recipe", "..%2Fbuiltins"])
def test_an_unknown_recipe_is_not_found(client: TestClient, name: str) -> None:
    r = client.get(f"/v1/recipes/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "not-found"


@pytest.fixture(scope="module")
def linear_id(client: TestClient) -> str:
    buf = io.BytesIO()
    torch.manual_seed(5)
    torch.save(nn.Linear(3, 2).state_dict(), buf)
    r = client.post("/v1/checkpoints?filename=lin.pth", content=buf.getvalue())
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def test_a_job_keeps_the_builtin_recipe_it_names(
    client: TestClient, settings: Settings, linear_id: str
) -> None:
    from app.db.models import Job
    from app.db.session import Database

    r = client.post(
        "/v1/jobs",
        json={"source": linear_id, "target": {"checkpoint": linear_id},
              "recipe": "builtin:gpt2-to-nanogpt", "dry_run": True},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    database = Database(settings.database_url)
    with database.transaction(write=False) as session:
        stored = session.get(Job, r.json()["id"])
        assert stored is not None
        recipe = stored.recipe
    database.dispose()
    assert recipe == load_recipe("builtin:gpt2-to-nanogpt").model_dump(mode="json")
    client.post(f"/v1/jobs/{r.json()['id']}/cancel")


@pytest.mark.parametrize(
    ("recipe", "status", "kind"),
    [
        ("builtin:no-such-recipe", 422, "invalid-recipe"),
        ("/etc/passwd", 422, "validation-error"),
        ("builtin:../x", 422, "validation-error"),
    ],
)
def test_a_job_names_only_builtins_that_exist(
    client: TestClient, linear_id: str, recipe: str, status: int, kind: str
) -> None:
    r = client.post(
        "/v1/jobs",
        json={"source": linear_id, "target": {"checkpoint": linear_id}, "recipe": recipe},
    )
    assert (r.status_code, r.json()["type"]) == (status, kind)
