"""The published JSON Schemas: valid themselves, shipped, and pinning what they say they pin."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonschema import Draft202012Validator
from safetensors.torch import save_file
from torch import nn

from app.engine.meta import DTYPE_SIZES
from app.engine.pipeline import convert
from app.engine.readers import open_source
from app.engine.recipe import load_recipe
from app.engine.schemas import SCHEMA_NAMES, load_schema
from app.engine.target import Target, skeleton_from_module
from tests.fixtures import REPO_ROOT, cli_inspect
from tests.schemas import CHECKED, assert_valid


def test_every_schema_is_a_valid_draft_2020_12_schema_shipped_as_package_data() -> None:
    for name in SCHEMA_NAMES:
        schema = load_schema(name)
        Draft202012Validator.check_schema(schema)
        assert schema["properties"]["schema"] == {"const": f"graft.{name}/v1"}
    with pytest.raises(KeyError, match="no schema 'job'"):
        load_schema("job")
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"app.engine.schemas" = ["*.json"]' in pyproject


def test_the_skeleton_schema_knows_every_dtype_the_engine_does() -> None:
    tensor = load_schema("skeleton")["properties"]["tensors"]["additionalProperties"]
    assert set(tensor["properties"]["dtype"]["enum"]) == set(DTYPE_SIZES)


def _report(tmp_path: Path) -> dict[str, Any]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    save_file(model.state_dict(), str(tmp_path / "src.safetensors"))
    skeleton = skeleton_from_module(model)
    assert_valid("skeleton", skeleton)
    before = CHECKED["report"]
    with Target.from_skeleton(skeleton) as target:
        result = convert(
            tmp_path / "src.safetensors", target,
            load_recipe({"version": 1, "freeze_bn": True}), output=tmp_path / "o.safetensors",
        )  # fmt: skip
    assert CHECKED["report"] == before + 1  # the autouse hook validated it
    assert_valid("manifest", result.manifest)
    return result.report


def test_the_report_schema_pins_statuses_digests_and_counts(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert_valid("report", report)
    broken: list[tuple[str, Any]] = [
        ("status", "bogus"),
        ("digest", "sha256:00"),
        ("shape", [-1]),
    ]
    for field, value in broken:
        bad = copy.deepcopy(report)
        bad["entries"][0][field] = value
        with pytest.raises(AssertionError, match=rf"at /entries/0/{field}"):
            assert_valid("report", bad)
    bad = copy.deepcopy(report)
    bad["summary"]["loaded"] = -1
    with pytest.raises(AssertionError, match="at /summary/loaded"):
        assert_valid("report", bad)
    bad = copy.deepcopy(report)
    del bad["unused"]
    with pytest.raises(AssertionError, match="'unused' is a required property"):
        assert_valid("report", bad)
    # Additions a newer Graft makes (rules, tied, output files) still validate.
    newer = copy.deepcopy(report)
    newer["rules"] = [{"rule": "drop[0]", "matched": 2}]
    newer["summary"]["tied"] = 1
    newer["entries"][0]["status"] = "tied"
    newer["future_field"] = {"anything": True}
    assert_valid("report", newer)


def test_inspect_documents_fit_their_schema(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"state_dict": nn.Linear(3, 2).state_dict(), "epoch": 3}, path)
    with open_source(path) as source:
        assert_valid("inspect", json.loads(json.dumps(source.describe())))
    run = cli_inspect(path, "--json")
    assert run.returncode == 0, run.stderr
    assert_valid("inspect", json.loads(run.stdout))
