"""The endpoints the web app's form and pages use: auth mode, plans, recipe validation,
inspect, signed links, static pages and the friendlier validation errors."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from torch import nn

from app.services.errors import NotFoundError
from app.services.links import sign_link, verify_link
from tests.api.conftest import TestClient


def _saved(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _net(classes: int) -> nn.Module:
    torch.manual_seed(classes)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, classes))


@pytest.fixture(scope="module")
def ids(client: TestClient) -> dict[str, str]:
    src = client.post("/v1/checkpoints?filename=pre.pth", content=_saved(_net(10)))
    tgt = client.post("/v1/checkpoints?filename=tgt.pth", content=_saved(_net(5)))
    assert src.status_code == tgt.status_code == 201
    return {"source": src.json()["id"], "target": tgt.json()["id"]}


def test_auth_mode_is_public_and_lists_capabilities(client: TestClient) -> None:
    body = client.get("/v1/auth").json()
    assert body == {"mode": "local", "capabilities": ["job-events", "plans"]}


def test_plan_is_the_dry_run_report_and_never_a_job(
    client: TestClient, ids: dict[str, str]
) -> None:
    jobs_before = client.get("/v1/jobs").json()["count"]
    r = client.post(
        "/v1/plans",
        json={
            "source": ids["source"],
            "target": {"checkpoint": ids["target"]},
            "recipe": {"version": 1, "drop": ["3.*"]},
        },
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["schema"] == "graft.report/v1" and report["ok"] is True
    s = report["summary"]
    assert (s["loaded"], s["kept"], s["dropped"], s["unexpected"]) == (7, 2, 2, 0)
    assert {e["target"]: e["status"] for e in report["entries"]}["3.weight"] == "kept"
    assert client.get("/v1/jobs").json()["count"] == jobs_before


def test_plan_refusals_are_problems(client: TestClient, ids: dict[str, str]) -> None:
    bad = {"version": 1, "rename": [{"regex": "(", "to": "x"}]}
    r = client.post(
        "/v1/plans", json={"source": ids["source"], "target": {"checkpoint": ids["target"]},
                           "recipe": bad},
    )  # fmt: skip
    assert (r.status_code, r.json()["type"], r.json()["rule"]) == (
        422,
        "invalid-recipe",
        "rename[0]",
    )
    r = client.post("/v1/plans", json={"source": "nope", "target": {"checkpoint": ids["target"]}})
    assert (r.status_code, r.json()["type"]) == (422, "invalid-job")
    r = client.post(
        "/v1/plans", json={"source": ids["source"], "target": {"architecture": "no_such_arch"}}
    )
    assert (r.status_code, r.json()["type"]) == (422, "invalid-target")
    assert r.json()["title"] == "Invalid target"
    # The fuzzer's body: no `source` and an empty `sources` (was a 500).
    empty = {"source": None, "sources": {}, "target": {"checkpoint": ids["target"]}}
    for path in ("/v1/plans?groups=true", "/v1/jobs"):
        r = client.post(path, json=empty)
        assert (r.status_code, r.json()["type"]) == (422, "validation-error"), path


def test_recipe_validate_normalises_or_names_the_rule(client: TestClient) -> None:
    r = client.post("/v1/recipes/validate", json={"version": 1, "drop": ["fc.*"]})
    assert r.status_code == 200
    recipe = r.json()["recipe"]
    assert recipe["drop"] == ["fc.*"] and recipe["missing"] == "auto" and recipe["seed"] == 0
    r = client.post(
        "/v1/recipes/validate",
        json={"version": 1, "rename": [{"prefix": "a.", "to": "b."}, {"regex": "(", "to": "x"}]},
    )
    assert (r.status_code, r.json()["type"], r.json()["rule"]) == (
        422,
        "invalid-recipe",
        "rename[1]",
    )


def test_inspect_is_the_inspect_document(client: TestClient, ids: dict[str, str]) -> None:
    doc = client.get(f"/v1/checkpoints/{ids['source']}/inspect").json()
    assert doc["schema"] == "graft.inspect/v1"
    assert doc["paths"] == ["pre.pth"] and doc["totals"]["tensors"] == 9
    assert "groups" not in doc
    grouped = client.get(f"/v1/checkpoints/{ids['source']}/inspect?groups=true").json()
    assert grouped["groups"][0] == {
        "pattern": "0.weight", "keys": ["0.weight"], "shape": [8, 3, 3, 3], "dtype": "float32",
        "kind": "parameter",
    }  # fmt: skip
    assert client.get("/v1/checkpoints/nope/inspect").json()["type"] == "not-found"


def test_links_need_an_artifact_and_refuse_forgeries(client: TestClient) -> None:
    r = client.post("/v1/links", json={"job": "nope", "artifact": "weights"})
    assert (r.status_code, r.json()["type"]) == (404, "not-found")
    r = client.post("/v1/links", json={"job": "nope", "artifact": "secrets"})
    assert r.status_code == 422
    for token in ("x", "a.weights.1.sig", "a.weights.99999999999.forged"):
        r = client.get(f"/v1/links/{token}")
        assert (r.status_code, r.json()["type"]) == (404, "not-found")


def test_link_tokens_expire_and_bind_their_fields() -> None:
    secret = b"k" * 32
    link = sign_link(secret, "job1", "report", now=1000)
    assert link.expires_at == 1600
    assert verify_link(secret, link.token, now=1599) == ("job1", "report")
    with pytest.raises(NotFoundError):
        verify_link(secret, link.token, now=1601)
    with pytest.raises(NotFoundError):
        verify_link(b"other" * 8, link.token, now=1000)
    with pytest.raises(NotFoundError):
        verify_link(secret, link.token.replace("report", "weights"), now=1000)


def test_pages_and_docs_are_served_locally(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "/web/js/main.js" in index.text
    docs = client.get("/docs").text
    assert "https://" not in docs and "swagger-ui-5" in docs
    for asset in re.findall(r'(?:src|href)="(/web/[^"]+)"', docs + index.text):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404


def test_a_target_typo_is_one_sentence(client: TestClient, ids: dict[str, str]) -> None:
    r = client.post(
        "/v1/jobs", json={"source": ids["source"], "target": {"architecure": "graft_resnet"}}
    )
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "target must have one of checkpoint, skeleton, architecture; got 'architecure'"
    )


def test_a_missing_content_type_gets_a_hint(client: TestClient, ids: dict[str, str]) -> None:
    body = json.dumps({"source": ids["source"], "target": {"checkpoint": ids["target"]}})
    r = client.post(
        "/v1/jobs", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 422
    assert r.json()["type"] == "validation-error"
    assert "send JSON with `content-type: application/json`" in r.json()["detail"]


def test_readyz_without_embedded_workers_needs_no_warm_worker(client: TestClient) -> None:
    assert client.get("/readyz").json()["checks"] == {"database": "ok", "storage": "ok"}


YAML_RECIPE = "# the docs write recipes in YAML\nversion: 1\ndrop:\n  - '3.*'\n"


def test_plans_and_jobs_take_the_recipe_as_yaml_text(
    client: TestClient, ids: dict[str, str]
) -> None:
    body = {"source": ids["source"], "target": {"checkpoint": ids["target"]}}
    by_text = client.post("/v1/plans", json={**body, "recipe_text": YAML_RECIPE})
    by_json = client.post("/v1/plans", json={**body, "recipe": {"version": 1, "drop": ["3.*"]}})
    assert by_text.status_code == by_json.status_code == 200, by_text.text
    assert by_text.json()["summary"] == by_json.json()["summary"]
    assert by_text.json()["summary"]["dropped"] == 2
    job = client.post("/v1/jobs", json={**body, "recipe_text": YAML_RECIPE, "dry_run": True})
    assert job.status_code == 202, job.text
    doc = job.json()
    assert doc["recipe"] == {"version": 1, "drop": ["3.*"]}  # what the job stores and shows
    assert (doc["duration_seconds"], doc["coverage"]) == (None, None)  # not run yet
    both = client.post(
        "/v1/jobs", json={**body, "recipe": {"version": 1}, "recipe_text": YAML_RECIPE}
    )
    assert (both.status_code, both.json()["type"]) == (422, "invalid-recipe")
    assert "not both" in both.json()["detail"]
    bad = client.post("/v1/plans", json={**body, "recipe_text": "version: [1\n"})
    assert (bad.status_code, bad.json()["type"]) == (422, "invalid-recipe")
    assert bad.json()["detail"].startswith("not YAML or JSON at line 2")


def test_recipe_parse_is_yaml_safe_load_and_refuses_non_mappings(client: TestClient) -> None:
    r = client.post("/v1/recipes/parse", json={"recipe_text": YAML_RECIPE})
    assert r.json() == {"recipe": {"version": 1, "drop": ["3.*"]}}
    assert client.post("/v1/recipes/parse", json={"recipe_text": '{"version": 1}'}).json() == {
        "recipe": {"version": 1}
    }
    assert client.post("/v1/recipes/parse", json={"recipe_text": "  \n"}).json() == {"recipe": None}
    for text, detail in [
        ("- a\n- b\n", "a recipe is a mapping (version, rename, …), not a list"),
        ("!!python/object:os.system {}\n", "not YAML or JSON"),
    ]:
        r = client.post("/v1/recipes/parse", json={"recipe_text": text})
        assert (r.status_code, r.json()["type"]) == (422, "invalid-recipe")
        assert r.json()["detail"].startswith(detail)


def test_plans_are_grouped_on_request(client: TestClient, ids: dict[str, str]) -> None:
    body = {"source": ids["source"], "target": {"checkpoint": ids["target"]}}
    plain = client.post("/v1/plans", json=body).json()
    grouped = client.post("/v1/plans", params={"groups": "true"}, json=body).json()
    assert "groups" not in plain
    assert grouped.pop("groups")["entries"][0] == {
        "status": "loaded", "pattern": "0.{weight,bias}", "sources": [], "how": [],
        "keys": ["0.weight", "0.bias"],
    }  # fmt: skip
    assert grouped["entries"] == plain["entries"]


def test_deliveries_retry_needs_a_delivery(client: TestClient, ids: dict[str, str]) -> None:
    body = {"source": ids["source"], "dry_run": True, "target": {"checkpoint": ids["target"]}}
    job = client.post("/v1/jobs", json=body).json()
    r = client.post(f"/v1/jobs/{job['id']}/deliveries/nope/retry")
    assert (r.status_code, r.json()["type"]) == (404, "not-found")
    assert r.json()["detail"] == f"job {job['id']} has no webhook delivery nope"
    r = client.post("/v1/jobs/nope/deliveries/nope/retry")
    assert (r.status_code, r.json()["type"]) == (404, "not-found")


def test_docs_link_back_to_the_web_app(client: TestClient) -> None:
    docs = client.get("/docs").text
    assert '<a id="back-to-app" href="/">' in docs
