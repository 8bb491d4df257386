"""split, merge, copy and transform (SPEC §2.1), run for real on tiny modules and compared
tensor by tensor; plus the rules' match counts, ``unmatched`` and ``allow_empty``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.engine.errors import InvalidRecipeError
from app.engine.plan import build_plan
from app.engine.readers import open_source
from app.engine.recipe import load_recipe
from tests.engine._models import entry, run, save_sd, skeleton_of, unused_of

DIM = 8


class FusedAttention(nn.Module):
    """timm-style attention: one fused qkv projection."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)


class SplitAttention(nn.Module):
    """The same attention with separate q, k, v projections."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(DIM, DIM)
        self.k = nn.Linear(DIM, DIM)
        self.v = nn.Linear(DIM, DIM)
        self.proj = nn.Linear(DIM, DIM)


class FusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module() for _ in range(2)])
        for block in self.blocks:
            block.attn = FusedAttention()


class SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SplitAttention() for _ in range(2)])


SPLIT_QKV = {
    "split": [
        {
            "from": r"re:blocks\.(\d+)\.attn\.qkv\.(weight|bias)",
            "to": [r"layers.\1.q.\2", r"layers.\1.k.\2", r"layers.\1.v.\2"],
            "dim": 0,
        }
    ],
    "rename": [{"regex": r"^blocks\.(\d+)\.attn\.proj\.", "to": r"layers.\1.proj."}],
    "strict": True,
}


def _fused_state(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in FusedNet().state_dict().items()}
    return sd, save_sd(sd, tmp_path / "fused.pt")


def test_split_fused_qkv_into_q_k_v(tmp_path: Path) -> None:
    sd, src = _fused_state(tmp_path)

    result, out = run(src, skeleton_of(SplitNet()), SPLIT_QKV, tmp_path / "split.safetensors")

    report = result.report
    assert result.ok, report.get("errors")
    summary = report["summary"]
    assert (summary["loaded"], summary["used"], summary["unexpected"]) == (16, 8, 0)
    q = entry(report, "layers.1.q.weight")
    assert q["status"] == "loaded"
    assert q["sources"] == ["blocks.1.attn.qkv.weight"]
    assert q["rules"] == ["split[0]"] and q["ops"] == ["split(0, 1/3)"]
    assert q["shape"] == [DIM, DIM] and q["source_shape"] == [3 * DIM, DIM]
    assert entry(report, "layers.0.v.bias")["ops"] == ["split(0, 3/3)"]
    # The 12 split parts are re-derived as slices of the source, read afresh.
    rederived = {"checked": 12, "how": {"split": 12}, "unequal": []}
    assert report["verification"] == {
        "checked": 16, "equal": 16, "strict_load": True, "rederived": rederived,
    }  # fmt: skip
    assert report["output"]["files"] == ["split.safetensors"]  # the final name, not the temp's
    assert not [p.name for p in tmp_path.iterdir() if "graft-tmp" in p.name]
    assert out is not None
    for i in range(2):
        for part, name in enumerate("qkv"):
            for leaf in ("weight", "bias"):
                fused = sd[f"blocks.{i}.attn.qkv.{leaf}"]
                assert torch.equal(out[f"layers.{i}.{name}.{leaf}"], fused.chunk(3)[part])
        assert torch.equal(out[f"layers.{i}.proj.weight"], sd[f"blocks.{i}.attn.proj.weight"])
    rules = {r["rule"]: r["matched"] for r in report["rules"]}
    assert rules == {"rename[0]": 4, "split[0]": 4, "init[0]": 16}


def test_merge_q_k_v_into_fused_qkv_keeps_order_and_shapes(tmp_path: Path) -> None:
    torch.manual_seed(1)
    sd = {k: v.clone() for k, v in SplitNet().state_dict().items()}
    src = save_sd(sd, tmp_path / "split.pt")
    recipe = {
        "merge": [
            {
                "from": [
                    r"re:layers\.(\d+)\.q\.(weight|bias)",
                    r"layers.\1.k.\2",
                    r"layers.\1.v.\2",
                ],
                "to": r"blocks.\1.attn.qkv.\2",
                "dim": 0,
            }
        ],
        "rename": [{"regex": r"^layers\.(\d+)\.proj\.", "to": r"blocks.\1.attn.proj."}],
        "strict": True,
    }

    result, out = run(src, skeleton_of(FusedNet()), recipe, tmp_path / "fused.safetensors")

    report = result.report
    assert result.ok, report.get("errors")
    assert (report["summary"]["loaded"], report["summary"]["used"]) == (8, 16)
    qkv = entry(report, "blocks.0.attn.qkv.weight")
    assert qkv["sources"] == ["layers.0.q.weight", "layers.0.k.weight", "layers.0.v.weight"]
    assert qkv["source_shapes"] == [[DIM, DIM]] * 3 and qkv["source_shape"] is None
    assert qkv["ops"] == ["merge(0, 3)"] and qkv["rules"] == ["merge[0]"]
    assert out is not None
    for i in range(2):
        for leaf in ("weight", "bias"):
            parts = [sd[f"layers.{i}.{n}.{leaf}"] for n in "qkv"]
            assert torch.equal(out[f"blocks.{i}.attn.qkv.{leaf}"], torch.cat(parts))
    assert {r["rule"]: r["matched"] for r in report["rules"]}["merge[0]"] == 4


class Heads(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.cls = nn.Linear(DIM, a)
        self.reg = nn.Linear(DIM, b)


def test_split_with_unequal_sizes(tmp_path: Path) -> None:
    torch.manual_seed(2)
    head = nn.Linear(DIM, 7)
    sd = {"head.weight": head.weight.detach().clone(), "head.bias": head.bias.detach().clone()}
    src = save_sd(sd, tmp_path / "head.pt")
    recipe = {
        "split": [
            {"from": "head.weight", "to": ["cls.weight", "reg.weight"], "dim": 0, "sizes": [3, 4]},
            {"from": "head.bias", "to": ["cls.bias", "reg.bias"], "sizes": [3, 4]},
        ],
        "strict": True,
    }

    result, out = run(src, skeleton_of(Heads(3, 4)), recipe, tmp_path / "heads.safetensors")

    assert result.ok, result.report.get("errors")
    assert out is not None
    assert torch.equal(out["cls.weight"], sd["head.weight"][:3])
    assert torch.equal(out["reg.weight"], sd["head.weight"][3:])
    assert torch.equal(out["reg.bias"], sd["head.bias"][3:])
    assert entry(result.report, "reg.weight")["ops"] == ["split(0, 2/2)"]


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, DIM)
        self.lm_head = nn.Linear(DIM, 11, bias=False)


def test_copy_feeds_a_tied_key_and_counts_its_source_once(tmp_path: Path) -> None:
    torch.manual_seed(3)
    embed = nn.Embedding(11, DIM)
    sd = {"embed.weight": embed.weight.detach().clone()}
    src = save_sd(sd, tmp_path / "lm.pt")
    recipe = {"copy": [{"from": "embed.weight", "to": "lm_head.weight"}], "strict": True}

    result, out = run(src, skeleton_of(TiedLM()), recipe, tmp_path / "lm.safetensors")

    report = result.report
    assert result.ok, report.get("errors")
    summary = report["summary"]
    assert (summary["loaded"], summary["tied"], summary["used"]) == (1, 1, 1)
    assert summary["coverage"]["tensors"] == 1.0
    tied = entry(report, "lm_head.weight")
    assert (tied["status"], tied["sources"], tied["rules"]) == (
        "tied",
        ["embed.weight"],
        ["copy[0]"],
    )
    assert entry(report, "embed.weight")["status"] == "loaded"
    assert report["verification"]["equal"] == 2
    assert out is not None
    assert torch.equal(out["lm_head.weight"], sd["embed.weight"])
    assert torch.equal(out["embed.weight"], sd["embed.weight"])


class Conv1DNet(nn.Module):
    """GPT-2 stores Conv1D weights as [in, out]; a Linear wants [out, in]."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(DIM, 3 * DIM)
        self.head = nn.Linear(DIM, 4)
        self.proj = nn.Conv2d(DIM, DIM, 1)


def test_transforms_chain_in_order_and_keep_values(tmp_path: Path) -> None:
    torch.manual_seed(4)
    sd = {
        "c_attn.weight": torch.randn(DIM, 3 * DIM),  # Conv1D layout
        "c_attn.bias": torch.randn(3 * DIM),
        "head.weight": torch.randn(5, DIM),  # 5 classes, the first is background
        "head.bias": torch.randn(5),
        "proj.weight": torch.randn(DIM, DIM),
        "proj.bias": torch.randn(DIM),
    }
    src = save_sd(sd, tmp_path / "gpt.pt")
    recipe = {
        "transform": [
            {"match": "*.weight", "op": "slice", "dim": 0, "start": 1},  # head only: see match
            {"match": "c_attn.weight", "op": "transpose"},
            {"match": "proj.weight", "op": "reshape", "shape": [DIM, DIM, 1, 1]},
        ],
        "strict": True,
    }
    recipe["transform"][0]["match"] = "head.*"

    result, out = run(src, skeleton_of(Conv1DNet()), recipe, tmp_path / "t.safetensors")

    report = result.report
    assert result.ok, report.get("errors")
    assert report["summary"]["loaded"] == 6
    assert entry(report, "c_attn.weight")["ops"] == ["transpose(0,1)"]
    assert entry(report, "head.weight")["ops"] == ["slice(dim=0, 1:5)"]
    assert entry(report, "proj.weight")["ops"] == [f"reshape([{DIM}, {DIM}]->[{DIM}, {DIM}, 1, 1])"]
    assert out is not None
    assert torch.equal(out["c_attn.weight"], sd["c_attn.weight"].t())
    assert torch.equal(out["head.weight"], sd["head.weight"][1:])
    assert torch.equal(out["head.bias"], sd["head.bias"][1:])
    assert torch.equal(out["proj.weight"], sd["proj.weight"].reshape(DIM, DIM, 1, 1))
    assert {r["rule"]: r["matched"] for r in report["rules"]} == {
        "transform[0]": 2,
        "transform[1]": 1,
        "transform[2]": 1,
        "init[0]": 6,
    }


def test_transforms_apply_after_split_in_order(tmp_path: Path) -> None:
    sd, src = _fused_state(tmp_path)
    recipe = {
        **SPLIT_QKV,
        "transform": [
            {"match": "*.q.weight", "op": "transpose"},
            {"match": "*.q.weight", "op": "transpose"},  # chained: back where it was
        ],
    }

    result, out = run(src, skeleton_of(SplitNet()), recipe, tmp_path / "t.safetensors")

    assert result.ok, result.report.get("errors")
    q = entry(result.report, "layers.0.q.weight")
    assert q["ops"] == ["split(0, 1/3)", "transpose(0,1)", "transpose(0,1)"]
    assert q["rules"] == ["split[0]", "transform[0]", "transform[1]"]
    assert out is not None
    assert torch.equal(out["layers.0.q.weight"], sd["blocks.0.attn.qkv.weight"][:DIM])


# --- errors name the rule before any tensor moves ----------------------------------------------


def _plan_error(src: Path, model: nn.Module, recipe: dict) -> InvalidRecipeError:
    with (
        open_source(src) as source,
        skeleton_of(model) as target,
        pytest.raises(InvalidRecipeError) as caught,
    ):
        build_plan(source, target, load_recipe(recipe))
    return caught.value


def test_split_that_does_not_divide_names_the_rule(tmp_path: Path) -> None:
    _, src = _fused_state(tmp_path)
    recipe = {**SPLIT_QKV}
    recipe["split"] = [{**SPLIT_QKV["split"][0], "to": ["a.\\1.\\2", "b.\\1.\\2"] * 2 + ["c"]}]
    error = _plan_error(src, SplitNet(), recipe)
    assert error.rule == "split[0]"
    assert "does not split into 5 equal parts" in error.message


def test_merge_part_dropped_names_the_rule(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = save_sd(SplitNet().state_dict(), tmp_path / "split.pt")
    recipe = {
        "drop": ["layers.1.k.bias"],
        "merge": [
            {
                "from": [
                    r"re:layers\.(\d+)\.q\.(weight|bias)",
                    r"layers.\1.k.\2",
                    r"layers.\1.v.\2",
                ],
                "to": r"blocks.\1.attn.qkv.\2",
            }
        ],
    }
    error = _plan_error(src, FusedNet(), recipe)
    assert error.rule == "merge[0]"
    assert error.message == (
        "merge[0]: part 'layers.1.k.bias' of 'blocks.1.attn.qkv.bias' is missing: it was left "
        "out by drop[0]"
    )


def test_split_output_also_fed_by_a_rename_is_an_error_naming_both(tmp_path: Path) -> None:
    _, src = _fused_state(tmp_path)
    recipe = {
        **SPLIT_QKV,
        "rename": [{"key": "blocks.0.attn.proj.weight", "to": "layers.0.q.weight"}],
    }
    error = _plan_error(src, SplitNet(), recipe)
    assert error.rule == "split[0]"
    assert "'layers.0.q.weight' is fed by both split[0] and rename[0]" in error.message


def test_transform_that_does_not_fit_names_the_rule(tmp_path: Path) -> None:
    _, src = _fused_state(tmp_path)
    recipe = {**SPLIT_QKV, "transform": [{"match": "*.q.bias", "op": "transpose"}]}
    error = _plan_error(src, SplitNet(), recipe)
    assert error.rule == "transform[0]"
    assert "transpose without `dims`" in error.message


# --- unmatched and allow_empty ------------------------------------------------------------------


def test_a_rule_matching_nothing_is_refused_and_named(tmp_path: Path) -> None:
    _, src = _fused_state(tmp_path)
    recipe = {**SPLIT_QKV, "drop": ["blocks.*.attn.qkv.wieght"]}

    result, out = run(src, skeleton_of(SplitNet()), recipe, tmp_path / "x.safetensors")

    assert not result.ok and out is None
    assert result.report["errors"] == [
        "unmatched: drop[0] (blocks.*.attn.qkv.wieght) matched no key; check it for a typo "
        "(unmatched: error; `unmatched: warn` lets it pass)"
    ]
    assert {r["rule"]: r["matched"] for r in result.report["rules"]}["drop[0]"] == 0

    warned, out = run(
        src, skeleton_of(SplitNet()), {**recipe, "unmatched": "warn"}, tmp_path / "y.safetensors"
    )
    assert warned.ok and out is not None
    assert warned.report["warnings"] == [
        "unmatched: drop[0] (blocks.*.attn.qkv.wieght) matched no key; check it for a typo"
    ]


def test_matched_counts_selection_not_change(tmp_path: Path) -> None:
    """A rename that selects keys but leaves them as they were, an adapt rule whose key already
    has the right shape, overlapping drops: all matched."""
    _, src = _fused_state(tmp_path)
    recipe = {
        **SPLIT_QKV,
        "rename": [
            {"prefix": "blocks.", "to": "blocks."},
            *SPLIT_QKV["rename"],
        ],
        "drop": ["layers.1.proj.bias", "*.1.*.bias"],  # renamed keys
        "adapt": [{"match": "layers.0.proj.weight", "op": "resize"}],
        "freeze": ["layers.*"],
        "strict": False,
    }

    result, _ = run(src, skeleton_of(SplitNet()), recipe, tmp_path / "x.safetensors")

    assert result.ok, result.report.get("errors")
    assert {r["rule"]: r["matched"] for r in result.report["rules"]} == {
        "rename[0]": 8,
        "rename[1]": 4,
        "drop[0]": 1,
        "drop[1]": 2,  # blocks.1.attn.qkv.bias and layers.1.proj.bias
        "split[0]": 3,  # blocks.1.attn.qkv.bias was dropped first
        "adapt[0]": 1,
        "init[0]": 16,
        "freeze[0]": 16,
    }
    assert entry(result.report, "layers.0.proj.weight")["status"] == "loaded"
    assert unused_of(result.report)["blocks.1.attn.qkv.bias"] == ("dropped", "drop[1]")


def test_explicit_init_rule_matching_nothing_is_unmatched(tmp_path: Path) -> None:
    _, src = _fused_state(tmp_path)
    recipe = {
        **SPLIT_QKV,
        "init": [{"match": "head.*", "fn": "zeros"}, {"match": "*", "fn": "auto"}],
    }
    result, _ = run(src, skeleton_of(SplitNet()), recipe, tmp_path / "x.safetensors")
    assert not result.ok
    assert [e.split(" (")[0] for e in result.report["errors"]] == ["unmatched: init[0]"]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            {"split": [{"form": "a", "to": ["b", "c"]}]},
            "split[0]: missing field 'from'; split[0]: unknown field 'form'; did you mean 'from'? "
            "split takes from, to, dim, sizes, groups",
        ),
        (
            {"split": [{"from": "a", "to": ["b", "c"], "sizes": [1]}]},
            "split[0]: sizes has 1 entries but `to` names 2 keys; give one size per key",
        ),
        (
            {"merge": [{"from": [r"re:a(\d)", r"b\2"], "to": "c"}]},
            r"merge[0]: name 'b\\2' refers to group \2 but the regex has 1 capturing group(s); "
            "add (...) around the part to keep",
        ),
        ({"copy": [{"from": "a"}]}, "copy[0]: missing field 'to'"),
        (
            {"transform": [{"match": "a", "op": "flip"}]},
            "transform[0]: unknown op 'flip' (expected transpose, slice, reshape, permute_rotary)",
        ),
        (
            {"transform": [{"match": "a", "op": "reshape", "shape": [-1, -1]}]},
            "transform[0]: shape [-1, -1] has more than one -1; at most one dim is inferred",
        ),
    ],
)
def test_invalid_rules_are_named_when_the_recipe_loads(recipe: dict, message: str) -> None:
    with pytest.raises(InvalidRecipeError) as caught:
        load_recipe(recipe)
    assert str(caught.value) == message


def test_recipe_with_new_rules_round_trips_through_json() -> None:
    recipe = load_recipe({**SPLIT_QKV, "copy": [{"from": "a", "to": "b"}], "unmatched": "warn"})
    dumped = recipe.model_dump(mode="json")
    assert dumped["split"][0]["from"] == SPLIT_QKV["split"][0]["from"]
    assert dumped["copy"] == [{"from": "a", "to": "b"}]
    assert load_recipe(dumped) == recipe
