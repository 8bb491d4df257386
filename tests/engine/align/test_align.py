"""The aligner: the public benchmark's promises, the assignment it rests on, the recipe it
writes, and the 7B-scale timing on a transformers skeleton built on the meta device."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from app.engine.align import align, match_keys, render_json, render_yaml
from app.engine.align.assign import forced_pairs, linear_sum_assignment
from app.engine.meta import TensorInfo
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target
from bench.align import run_pair
from bench.align_pairs import PAIRS, llama_meta_to_hf, mobilenetv2_tv_to_timm
from tests.parts import import_part

# --- the benchmark -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_benchmark_pair_applies_nothing_wrong_and_recalls(name: str) -> None:
    row = run_pair(name)

    assert row.wrong == 0, row.wrong_keys
    assert row.recall >= 0.9, (row.correct, row.decidable)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_sorted_keys_lose_order_evidence_but_never_make_a_wrong_match(name: str) -> None:
    # A safetensors file lists its keys sorted: module order is gone, recall may drop.
    row = run_pair(name, sort=True)

    assert row.wrong == 0, row.wrong_keys


def test_the_ambiguous_pair_reports_its_tie_with_every_candidate() -> None:
    pair = PAIRS["ambiguous"]()

    result = align(pair.source, pair.target)

    tied = {m.target: m for m in result.unresolved}
    assert set(tied) == {"tail.left.weight", "tail.right.weight"}
    for m in tied.values():
        assert (m.applied, m.ambiguous) == (False, True)
        assert {c.source for c in m.candidates} == {
            "mix.alpha.weight", "mix.delta.weight", "mix.omega.weight"
        }  # fmt: skip
    assert not result.complete and result.fed == 6


def test_order_and_shape_alone_align_torchvision_mobilenetv2_to_timm() -> None:
    pair = mobilenetv2_tv_to_timm()

    matches = {m.target: m for m in match_keys(pair.source, pair.target, min_confidence=0.9)}

    m = matches["blocks.3.2.conv_dw.weight"]
    assert (m.sources, m.applied) == (("features.9.conv.1.0.weight",), True)
    assert "order" in m.why and m.confidence >= 0.9


def test_a_7b_skeleton_from_transformers_on_the_meta_device_aligns_completely() -> None:
    """Its time is measured in bench/align.py (a timed test would flake on a loaded host)."""
    transformers = import_part("transformers", "transformers", "make setup installs it")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig())  # 7B: 32 x 4096
    target = Target.from_module(model, name="llama-7b").tensors
    pair = llama_meta_to_hf()
    assert set(target) == set(pair.target) and len(target) == 291

    result = align(pair.source, target)

    assert result.complete and result.fed == 291
    truth = {t: s[0] for t, (s, _) in pair.truth.items()}
    assert {m.target: m.sources[0] for m in result.matches} == truth
    assert len(result.recipe["rename"]) == 12  # one regex per family, not one rule per key


# --- assignment ------------------------------------------------------------------------------


def test_linear_sum_assignment_is_optimal_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, m = rng.integers(1, 6, 2)
        score = rng.random((n, m))
        score[rng.random((n, m)) < 0.3] = -np.inf
        pairs = linear_sum_assignment(score)
        best = max(
            (len(rows), sum(score[r, c] for r, c in zip(rows, cols, strict=True)))
            for k in range(min(n, m) + 1)
            for rows in itertools.combinations(range(n), k)
            for cols in itertools.permutations(range(m), k)
            if all(np.isfinite(score[r, c]) for r, c in zip(rows, cols, strict=True))
        )
        assert (len(pairs), round(sum(score[p] for p in pairs), 9)) == (best[0], round(best[1], 9))


def test_forced_pairs_are_those_on_every_longest_alignment() -> None:
    assert forced_pairs(np.eye(3, dtype=bool)) == {(0, 0), (1, 1), (2, 2)}
    assert forced_pairs(np.ones((3, 2), dtype=bool)) == set()  # which two of three: no order
    # a b a  vs  a b: (1, 1) is on every alignment, the a's are not
    eq = np.array([[True, False], [False, True], [True, False]])
    assert forced_pairs(eq) == {(0, 0), (1, 1)}


# --- what it writes --------------------------------------------------------------------------


def _t(key: str, *shape: int) -> TensorInfo:
    return TensorInfo(key, shape, "float32")


def test_written_recipe_collapses_families_and_loads_back_from_yaml_and_json() -> None:
    pair = PAIRS["resnet18-detectron2"]()
    result = align(pair.source, pair.target)

    text = render_yaml(result, header="test")
    assert "# confidence" in text
    rule = {"regex": r"^layer1\.(\d+)\.bn1\.(bias|num_batches_tracked|running_mean|running_var"
            r"|weight)$", "to": r"res2.\1.conv1.norm.\2"}  # fmt: skip
    assert rule in result.recipe["rename"]
    assert len(result.recipe["rename"]) < 40  # 122 keys
    as_yaml = load_recipe(yaml.safe_load(text))
    as_json = load_recipe(json.loads(render_json(result)))
    assert as_yaml == as_json == load_recipe(result.recipe)
    assert json.loads(render_json(result))["rename"][0]["x-confidence"] == 0.968


def test_user_rules_run_first_and_alignment_takes_the_rest() -> None:
    source = {k: _t(k, 4, 4) for k in ("enc.a.weight", "enc.b.weight")}
    source["stem.weight"] = _t("stem.weight", 8, 3)
    target = {k: _t(k, 4, 4) for k in ("body.a.weight", "body.b.weight")}
    target["input.weight"] = _t("input.weight", 3, 8)

    result = align(source, target, {"rename": [{"prefix": "enc.", "to": "body."}]})

    assert result.complete
    assert result.recipe["rename"][0] == {"prefix": "enc.", "to": "body."}
    assert result.recipe["rename"][1] == {"key": "stem.weight", "to": "input.weight"}
    assert result.recipe["transform"] == [{"match": "input.weight", "op": "transpose"}]
    assert result.confidences == {"rename[1]": (0.92, 1), "transform[0]": (0.92, 1)}


def test_min_confidence_holds_back_what_is_below_it() -> None:
    pair = PAIRS["resnet18-detectron2"]()

    result = align(pair.source, pair.target, min_confidence=0.99)

    assert all(m.confidence >= 0.99 for m in result.matches if m.applied)
    assert not result.complete and result.fed < result.total


# --- align: apply inside a plan ------------------------------------------------------------


def test_align_apply_in_a_recipe_loads_a_transposed_match(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = {
        "encoder.attn.c_attn.weight": torch.randn(8, 24),  # Conv1D: [in, out]
        "encoder.attn.c_attn.bias": torch.randn(24),
        "encoder.ln.weight": torch.randn(8),
    }
    source = tmp_path / "src.pt"
    torch.save(weights, source)
    target = Target.from_skeleton({"schema": "graft.skeleton/v1", "tensors": {
        "body.attention.qkv.weight": {"shape": [24, 8], "dtype": "float32"},
        "body.attention.qkv.bias": {"shape": [24], "dtype": "float32"},
        "body.norm.weight": {"shape": [8], "dtype": "float32"},
    }})  # fmt: skip

    result = convert(source, target, load_recipe({"align": "apply", "strict": True}),
                     output=tmp_path / "out.safetensors")  # fmt: skip

    assert result.ok, result.report.get("errors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["body.attention.qkv.weight"], weights["encoder.attn.c_attn.weight"].t())
    assert torch.equal(out["body.norm.weight"], weights["encoder.ln.weight"])
    entry = next(e for e in result.report["entries"] if e["target"] == "body.attention.qkv.weight")
    assert (entry["rules"], entry["ops"][0]) == (["align"], "transpose(0,1)")
