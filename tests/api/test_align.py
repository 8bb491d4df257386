"""POST /v1/align: the recipe alignment writes (SPEC §2.2), from headers alone, in an
inspection child; the recipe it answers is one a plan applies as it is."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from tests.api.conftest import TestClient


class _Renamed(nn.Module):
    """The same layers as ``_flat()``, under names that share nothing with its ``0.``/``1.``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.conv = nn.Conv2d(3, 8, 3)
        self.stem.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)


def _flat() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 10))


def _saved(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ids(client: TestClient) -> dict[str, str]:
    src = client.post("/v1/checkpoints?filename=flat.pth", content=_saved(_flat()))
    tgt = client.post("/v1/checkpoints?filename=renamed.pth", content=_saved(_Renamed()))
    assert src.status_code == tgt.status_code == 201
    return {"source": src.json()["id"], "target": tgt.json()["id"]}


def test_align_writes_the_recipe_a_plan_applies(client: TestClient, ids: dict[str, str]) -> None:
    r = client.post(
        "/v1/align", json={"source": ids["source"], "target": {"checkpoint": ids["target"]}}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe"]["rename"] == [
        {"regex": r"^0\.(bias|weight)$", "to": r"stem.conv.\1"},
        {"regex": r"^1\.(bias|num_batches_tracked|running_mean|running_var|weight)$",
         "to": r"stem.bn.\1"},
        {"regex": r"^3\.(bias|weight)$", "to": r"head.\1"},
    ]  # fmt: skip
    assert body["unresolved"] == []
    assert {m["target"]: (m["sources"], m["applied"]) for m in body["matches"]} == {
        "stem.conv.weight": (["0.weight"], True),
        "stem.conv.bias": (["0.bias"], True),
        "stem.bn.weight": (["1.weight"], True),
        "stem.bn.bias": (["1.bias"], True),
        "stem.bn.running_mean": (["1.running_mean"], True),
        "stem.bn.running_var": (["1.running_var"], True),
        "stem.bn.num_batches_tracked": (["1.num_batches_tracked"], True),
        "head.weight": (["3.weight"], True),
        "head.bias": (["3.bias"], True),
    }
    assert body["rules"] == {
        "rename[0]": {"confidence": 0.92, "keys": 2},
        "rename[1]": {"confidence": 0.92, "keys": 5},
        "rename[2]": {"confidence": 0.92, "keys": 2},
    }
    plan = client.post(
        "/v1/plans",
        json={"source": ids["source"], "target": {"checkpoint": ids["target"]},
              "recipe": body["recipe"]},
    )  # fmt: skip
    assert plan.status_code == 200, plan.text
    report = plan.json()
    assert (report["ok"], report["summary"]["loaded"], report["summary"]["initialized"]) == (
        True,
        9,
        0,
    )


def test_align_below_min_confidence_applies_nothing_and_lists_candidates(
    client: TestClient, ids: dict[str, str]
) -> None:
    r = client.post(
        "/v1/align",
        json={"source": ids["source"], "target": {"checkpoint": ids["target"]},
              "min_confidence": 0.95},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert "rename" not in body["recipe"]
    # A BatchNorm's counter is benign: left unfed, it is not listed.
    assert [u["target"] for u in body["unresolved"]] == [
        "stem.conv.weight", "stem.conv.bias", "stem.bn.weight", "stem.bn.bias",
        "stem.bn.running_mean", "stem.bn.running_var", "head.weight", "head.bias",
    ]  # fmt: skip
    head = next(u for u in body["unresolved"] if u["target"] == "head.weight")
    assert (head["ambiguous"], head["candidates"][0]) == (
        False,
        {"source": "3.weight", "confidence": 0.92},
    )


def test_align_keeps_the_users_rules_first(client: TestClient, ids: dict[str, str]) -> None:
    recipe = {"version": 1, "rename": [{"prefix": "3.", "to": "head."}]}
    r = client.post(
        "/v1/align",
        json={"source": ids["source"], "target": {"checkpoint": ids["target"]}, "recipe": recipe},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe"]["rename"][0] == {"prefix": "3.", "to": "head."}
    assert {m["target"] for m in body["matches"]} == {
        "stem.conv.weight", "stem.conv.bias", "stem.bn.weight", "stem.bn.bias",
        "stem.bn.running_mean", "stem.bn.running_var", "stem.bn.num_batches_tracked",
    }  # fmt: skip


def test_align_refusals_are_problems(client: TestClient, ids: dict[str, str]) -> None:
    target = {"checkpoint": ids["target"]}
    r = client.post("/v1/align", json={"source": "nope", "target": target})
    assert (r.status_code, r.json()["type"]) == (422, "invalid-job")
    r = client.post("/v1/align", json={"source": ids["source"], "target": {"checkpoint": "nope"}})
    assert (r.status_code, r.json()["type"]) == (422, "invalid-job")
    bad = {"version": 1, "rename": [{"regex": "(", "to": "x"}]}
    r = client.post("/v1/align", json={"source": ids["source"], "target": target, "recipe": bad})
    assert (r.status_code, r.json()["type"], r.json()["rule"]) == (
        422,
        "invalid-recipe",
        "rename[0]",
    )
    r = client.post(
        "/v1/align", json={"source": ids["source"], "target": target, "min_confidence": 2}
    )
    assert (r.status_code, r.json()["type"]) == (422, "validation-error")
    r = client.post(
        "/v1/align", json={"source": ids["source"], "target": {"architecture": "no_such_arch"}}
    )
    assert (r.status_code, r.json()["type"]) == (422, "invalid-target")
