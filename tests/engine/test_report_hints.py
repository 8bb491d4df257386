"""The report explains itself: each leftover key's best candidate and a rule to paste."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from app.engine.pipeline import ConversionResult, convert
from app.engine.plan.hints import paste_rename
from app.engine.recipe import load_recipe
from app.engine.report import Report, render_text
from app.engine.target import Target
from app.engine.target_spec import SKELETON_SCHEMA

SKELETON = {
    "schema": SKELETON_SCHEMA,
    "tensors": {
        "encoder.weight": {"shape": [4, 3], "dtype": "float32"},
        "encoder.bias": {"shape": [4], "dtype": "float32"},
        "head.weight": {"shape": [2, 4], "dtype": "float32"},
        "norm.weight": {"shape": [5], "dtype": "float32"},
    },
}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    tensors = {"enc.weight": (4, 3), "enc.bias": (4,), "head.weight": (2, 4), "extra.scale": (7,)}
    path = tmp_path / "src.safetensors"
    save_file({k: torch.rand(s, generator=gen) for k, s in tensors.items()}, str(path))
    return path


def _convert(src: Path, recipe: dict[str, Any], out: Path | None = None) -> ConversionResult:
    with Target.from_skeleton(SKELETON) as target:
        return convert(src, target, load_recipe({"version": 1, **recipe}), output=out)


def _hint(candidate: str, source: str, target: str) -> dict[str, Any]:
    paste = f"rename: [{{key: {source}, to: {target}}}]"
    return {"candidate": candidate, "confidence": 0.92, "paste": paste}


def test_leftover_keys_get_their_best_candidate_and_a_line_to_paste(source: Path) -> None:
    report = _convert(source, {}).report
    hints = {e["target"]: e.get("hint") for e in report["entries"]}
    assert hints == {
        "encoder.weight": _hint("enc.weight", "enc.weight", "encoder.weight"),
        "encoder.bias": _hint("enc.bias", "enc.bias", "encoder.bias"),
        "head.weight": None,  # loaded
        "norm.weight": None,  # no source key of its shape: no hint, the entry as it was
    }
    assert report["unused"] == [
        {"source": "enc.bias", "reason": "unexpected", "rule": None,
         "hint": _hint("encoder.bias", "enc.bias", "encoder.bias")},
        {"source": "enc.weight", "reason": "unexpected", "rule": None,
         "hint": _hint("encoder.weight", "enc.weight", "encoder.weight")},
        {"source": "extra.scale", "reason": "unexpected", "rule": None},
    ]  # fmt: skip
    assert "hint" not in next(e for e in report["entries"] if e["target"] == "norm.weight")
    assert Report.from_json(report).to_json() == report


def test_the_text_report_shows_each_pair_once(source: Path) -> None:
    text = render_text(_convert(source, {}).report)
    section = text.split("hints (best candidates)\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == [
        "  encoder.weight <- enc.weight (0.92)  "
        "paste: rename: [{key: enc.weight, to: encoder.weight}]",
        "  encoder.bias <- enc.bias (0.92)  paste: rename: [{key: enc.bias, to: encoder.bias}]",
    ]


def test_the_pasted_lines_feed_the_keys(source: Path, tmp_path: Path) -> None:
    report = _convert(source, {}).report
    rules = [
        yaml.safe_load(u["hint"]["paste"])["rename"][0] for u in report["unused"] if "hint" in u
    ]
    out = tmp_path / "out.safetensors"
    fixed = _convert(source, {"rename": rules, "drop": ["extra.*"]}, out).report
    assert fixed["ok"] and fixed["unused"][0]["reason"] == "dropped"
    status = {e["target"]: e["status"] for e in fixed["entries"]}
    assert status == {"encoder.weight": "loaded", "encoder.bias": "loaded",
                      "head.weight": "loaded", "norm.weight": "initialized"}  # fmt: skip
    assert "hint" not in fixed["entries"][3]  # nothing of its shape is left over
    assert torch.equal(load_file(str(out))["encoder.weight"], load_file(str(source))["enc.weight"])


def test_keys_yaml_cannot_take_bare_are_quoted() -> None:
    paste = paste_rename("block: 0.w", "layers.0.weight")
    assert paste == 'rename: [{key: "block: 0.w", to: layers.0.weight}]'
    assert yaml.safe_load(paste) == {"rename": [{"key": "block: 0.w", "to": "layers.0.weight"}]}


def test_a_hint_names_the_key_as_the_earlier_renames_left_it(source: Path) -> None:
    recipe: dict[str, Any] = {"rename": [{"prefix": "enc.", "to": "wrong."}], "drop": ["extra.*"]}
    report = _convert(source, recipe).report
    unused = {u["source"]: u for u in report["unused"]}
    paste = "rename: [{key: wrong.weight, to: encoder.weight}]"
    assert unused["enc.weight"]["renamed"] == "wrong.weight"
    assert unused["enc.weight"]["hint"]["paste"] == paste
    recipe["rename"] += yaml.safe_load(paste)["rename"]
    fixed = _convert(source, recipe).report
    assert next(e for e in fixed["entries"] if e["target"] == "encoder.weight")["sources"] == [
        "enc.weight"
    ]
