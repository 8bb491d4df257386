"""Which source key feeds which target key: strict matching, wrapper prefixes, renames,
drop/only, shape mismatches, align. Each conversion is run for real and its output compared
tensor by tensor with the source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.engine.plan import build_plan
from app.engine.readers import Source, open_source
from app.engine.recipe import load_recipe
from tests.engine._models import (
    SmallNet,
    assert_same,
    entry,
    run,
    save_sd,
    skeleton_of,
    small_state_dict,
    template_of,
    unused_of,
)

N = len(small_state_dict())  # 32 tensors: 5 convs, 5 BatchNorms x 5, fc weight + bias


def _summary(**counts: int) -> dict[str, int]:
    base = dict.fromkeys(
        (
            "loaded",
            "adapted",
            "tied",
            "initialized",
            "kept",
            "used",
            "dropped",
            "unexpected",
            "mismatched",
        ),
        0,
    )
    return base | counts


def _counts(report: dict) -> dict[str, int]:
    return {k: v for k, v in report["summary"].items() if k != "coverage"}


# --- strict -----------------------------------------------------------------------------------


def test_full_strict_match_loads_everything(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    src = save_sd(sd, tmp_path / "src.pt")
    target = template_of(small_state_dict(1), tmp_path / "template.safetensors")

    result, out = run(src, target, {"strict": True}, tmp_path / "out.safetensors")

    report = result.report
    assert result.ok and report["ok"] and "errors" not in report
    assert _counts(report) == _summary(loaded=N, used=N)
    assert report["summary"]["coverage"] == {"tensors": 1.0, "elements": 1.0}
    assert report["verification"] == {"checked": N, "equal": N, "strict_load": True}
    assert {e["status"] for e in report["entries"]} == {"loaded"}
    assert report["unused"] == [] and report["warnings"] == []
    assert out is not None and set(out) == set(sd)
    assert_same(out, sd)


def test_strict_failure_lists_missing_and_unexpected_and_writes_nothing(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    src = save_sd({**sd, "extra.weight": torch.ones(2)}, tmp_path / "src.pt")
    template = {**small_state_dict(1), "new.weight": torch.zeros(3)}
    target = template_of(template, tmp_path / "template.safetensors")
    out_path = tmp_path / "out.safetensors"

    result, out = run(src, target, {"strict": True}, out_path)

    report = result.report
    assert not result.ok and not report["ok"]
    assert result.output is None and out is None and not out_path.exists()
    errors = report["errors"]
    assert len(errors) == 2
    assert "not loaded" in errors[0] and "new.weight" in errors[0]
    assert "not used" in errors[1] and "extra.weight" in errors[1]
    assert entry(report, "new.weight")["status"] == "kept"
    assert unused_of(report) == {"extra.weight": ("unexpected", None)}
    assert _counts(report) == _summary(loaded=N, kept=1, used=N, unexpected=1)
    assert report["verification"] is None


def test_missing_num_batches_tracked_is_benign_under_strict(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    old_style = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    src = save_sd(old_style, tmp_path / "src.pt")

    result, out = run(src, skeleton_of(SmallNet()), {"strict": True}, tmp_path / "out.safetensors")

    assert result.ok, result.report.get("errors")
    counter = entry(result.report, "bn1.num_batches_tracked")
    assert counter["status"] == "initialized" and counter["benign"] is True
    assert out is not None
    assert out["bn1.num_batches_tracked"].dtype == torch.int64
    assert out["bn1.num_batches_tracked"].item() == 0
    assert_same(out, old_style)


# --- wrapper prefixes -------------------------------------------------------------------------


def test_dataparallel_and_compile_prefixes_are_stripped(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        src = save_sd({prefix + k: v for k, v in sd.items()}, tmp_path / "src.pt")
        target = template_of(small_state_dict(1), tmp_path / "template.safetensors")

        result, out = run(src, target, {"strict": True}, tmp_path / "out.safetensors")

        assert result.ok, (prefix, result.report.get("errors"))
        assert result.report["source"]["stripped_prefix"] == prefix
        assert _counts(result.report) == _summary(loaded=N, used=N)
        assert entry(result.report, "conv1.weight")["sources"] == ["conv1.weight"]
        assert out is not None
        assert_same(out, sd)


def test_lightning_checkpoint_model_prefix_stripped_because_it_helps(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    ckpt = {
        "state_dict": {"model." + k: v for k, v in sd.items()},
        "pytorch-lightning_version": "2.2.0",
        "epoch": 3,
        "global_step": 120,
    }
    src = save_sd(ckpt, tmp_path / "last.ckpt")

    result, out = run(src, skeleton_of(SmallNet()), {"strict": True}, tmp_path / "out.safetensors")

    source = result.report["source"]
    assert result.ok
    assert (source["entry"], source["stripped_prefix"], source["format"]) == (
        "state_dict",
        "model.",
        "torch-zip",
    )
    assert _counts(result.report) == _summary(loaded=N, used=N)
    assert out is not None
    assert_same(out, sd)


def test_model_prefix_kept_when_the_target_has_it_too(tmp_path: Path) -> None:
    sd = {"model." + k: v for k, v in small_state_dict(0).items()}
    src = save_sd({"state_dict": sd, "pytorch-lightning_version": "2.2.0"}, tmp_path / "a.ckpt")
    target = template_of(sd, tmp_path / "template.safetensors")

    result, out = run(src, target, {"strict": True}, tmp_path / "out.safetensors")

    assert result.ok
    assert result.report["source"]["stripped_prefix"] is None
    assert out is not None
    assert_same(out, sd)


# --- renames, drop, only ----------------------------------------------------------------------


def test_prefix_rename_with_dropped_classifier(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    src = save_sd(
        {
            **{"backbone." + k: v for k, v in body.items()},
            "fc.weight": sd["fc.weight"],
            "fc.bias": sd["fc.bias"],
        },
        tmp_path / "src.pt",
    )
    template = {
        "encoder." + k: v for k, v in small_state_dict(1).items() if not k.startswith("fc.")
    }
    recipe = {
        "strict": True,
        "rename": [{"prefix": "backbone.", "to": "encoder."}],
        "drop": ["fc.*"],
    }

    result, out = run(
        src, template_of(template, tmp_path / "t.safetensors"), recipe, tmp_path / "out.safetensors"
    )

    report = result.report
    assert result.ok
    assert _counts(report) == _summary(loaded=N - 2, used=N - 2, dropped=2)
    assert unused_of(report) == {
        "fc.weight": ("dropped", "drop[0]"),
        "fc.bias": ("dropped", "drop[0]"),
    }
    conv = entry(report, "encoder.conv1.weight")
    assert (conv["status"], conv["sources"], conv["rules"], conv["ops"]) == (
        "loaded",
        ["backbone.conv1.weight"],
        ["rename[0]"],
        [],
    )
    assert out is not None and set(out) == set(template)
    assert_same(out, {"encoder." + k: v for k, v in body.items()})


def test_drop_by_renamed_key(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    src = save_sd({"backbone." + k: v for k, v in sd.items()}, tmp_path / "src.pt")
    target = skeleton_of(SmallNet())
    recipe = {"rename": [{"prefix": "backbone.", "to": ""}], "drop": ["fc.weight", "fc.bias"]}

    result, out = run(src, target, recipe, tmp_path / "out.safetensors")

    assert result.ok
    assert unused_of(result.report) == {
        "backbone.fc.weight": ("dropped", "drop[0]"),
        "backbone.fc.bias": ("dropped", "drop[1]"),
    }
    assert entry(result.report, "fc.weight")["status"] == "initialized"
    assert out is not None
    assert_same(out, {k: v for k, v in sd.items() if not k.startswith("fc.")})


def test_ordered_regex_rules(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    # timm-style source names (blocks.N.normM) into a target that says layers.N.bnM
    source_sd = {k.replace("layer1.", "blocks.").replace(".bn", ".norm"): v for k, v in sd.items()}
    src = save_sd(source_sd, tmp_path / "src.pt")
    expected = {k.replace("layer1.", "layers."): v for k, v in sd.items()}
    template = {k: torch.zeros_like(v) for k, v in expected.items()}
    recipe = {
        "strict": True,
        "rename": [
            {"regex": r"^blocks\.(\d+)\.", "to": r"layers.\1."},
            {"regex": r"\.norm(\d)", "to": r".bn\1"},
        ],
    }

    result, out = run(
        src, template_of(template, tmp_path / "t.safetensors"), recipe, tmp_path / "o.safetensors"
    )

    report = result.report
    assert result.ok, report.get("errors")
    assert _counts(report) == _summary(loaded=N, used=N)
    norm = entry(report, "layers.1.bn2.running_var")
    assert norm["sources"] == ["blocks.1.norm2.running_var"]
    assert norm["rules"] == ["rename[0]", "rename[1]"]  # in the order they fired
    assert entry(report, "layers.0.conv1.weight")["rules"] == ["rename[0]"]
    assert entry(report, "bn1.weight")["rules"] == []  # the stem's bn1 has no "." before it
    assert out is not None and set(out) == set(expected)
    assert_same(out, expected)


def test_only_conv_weights_rest_kept_from_template(tmp_path: Path) -> None:
    sd, template = small_state_dict(0), small_state_dict(1)
    src = save_sd(sd, tmp_path / "src.pt")
    convs = [k for k in sd if "conv" in k]
    assert len(convs) == 5

    result, out = run(
        src,
        template_of(template, tmp_path / "t.safetensors"),
        {"only": ["re:.*conv\\d\\.weight"]},
        tmp_path / "out.safetensors",
    )

    report = result.report
    assert result.ok
    assert _counts(report) == _summary(loaded=5, kept=N - 5, used=5, dropped=N - 5)
    assert {u["reason"] for u in report["unused"]} == {"dropped"}
    assert {u["rule"] for u in report["unused"]} == {"only"}
    assert {e["target"] for e in report["entries"] if e["status"] == "loaded"} == set(convs)
    assert report["verification"]["checked"] == 5
    assert out is not None
    assert_same(out, {k: sd[k] for k in convs})
    assert_same(out, {k: v for k, v in template.items() if k not in convs})  # kept exactly
    assert not torch.equal(sd["fc.weight"], template["fc.weight"])  # so "kept" means something


# --- shape mismatches, nothing loaded ---------------------------------------------------------


def test_shape_mismatch_error_refuses_and_names_the_key(tmp_path: Path) -> None:
    src = save_sd(small_state_dict(0, classes=5), tmp_path / "src.pt")
    out_path = tmp_path / "out.safetensors"

    result, _ = run(
        src,
        template_of(small_state_dict(1), tmp_path / "t.safetensors"),
        {"shape_mismatch": "error"},
        out_path,
    )

    assert not result.ok and result.output is None and not out_path.exists()
    (error,) = result.report["errors"]
    assert "shape_mismatch: error" in error
    assert "fc.weight: source [5, 4] vs target [10, 4]" in error
    assert "fc.bias: source [5] vs target [10]" in error


def test_shape_mismatch_skip_keeps_template_value(tmp_path: Path) -> None:
    sd, template = small_state_dict(0, classes=5), small_state_dict(1)
    src = save_sd(sd, tmp_path / "src.pt")

    result, out = run(
        src,
        template_of(template, tmp_path / "t.safetensors"),
        {"shape_mismatch": "skip"},
        tmp_path / "out.safetensors",
    )

    report = result.report
    assert result.ok
    assert _counts(report) == _summary(loaded=N - 2, kept=2, used=N - 2, mismatched=2)
    assert unused_of(report) == {"fc.weight": ("mismatched", None), "fc.bias": ("mismatched", None)}
    fc = entry(report, "fc.weight")
    assert (fc["status"], fc["sources"], fc["source_shape"]) == ("kept", [], None)
    assert "shape_mismatch: fc.weight: source [5, 4] vs target [10, 4]" in report["warnings"]
    assert out is not None
    assert_same(out, {"fc.weight": template["fc.weight"], "fc.bias": template["fc.bias"]})
    assert_same(out, {k: v for k, v in sd.items() if not k.startswith("fc.")})


def test_nothing_loaded_is_flagged(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    src = save_sd({"other." + k: v for k, v in sd.items()}, tmp_path / "src.pt")
    template = small_state_dict(1)

    # allow_empty: false (the default) refuses a conversion that loads nothing.
    refused, none = run(
        src, template_of(template, tmp_path / "t.safetensors"), {}, tmp_path / "no.safetensors"
    )
    assert not refused.ok and none is None
    assert [e.split(":")[0] for e in refused.report["errors"]] == ["empty"]
    assert refused.report["warnings"][0] == (
        f"nothing_loaded: none of the {N} target tensors came from the source; check renames "
        "and prefixes (align: suggest lists likely matches)"
    )
    assert refused.report["target"]["tensors"] == N  # the header's count, BatchNorm counters too

    result, out = run(
        src,
        template_of(template, tmp_path / "t.safetensors"),
        {"allow_empty": True},
        tmp_path / "out.safetensors",
    )

    report = result.report
    assert result.ok
    assert _counts(report) == _summary(kept=N, unexpected=N)
    assert report["summary"]["coverage"] == {"tensors": 0.0, "elements": 0.0}
    assert len(report["warnings"]) == 1
    assert report["warnings"][0].startswith("nothing_loaded")
    assert out is not None
    assert_same(out, template)

    strict, _ = run(
        src,
        template_of(template, tmp_path / "t.safetensors"),
        {"strict": True, "allow_empty": True},
        tmp_path / "strict.safetensors",
    )
    assert not strict.ok and strict.report["warnings"][0].startswith("nothing_loaded")


# --- align ------------------------------------------------------------------------------------


class _Torchvisionish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv = nn.Conv2d(3, 4, 3)
        self.backbone.bn = nn.BatchNorm2d(4)
        self.classifier = nn.Linear(4, 10)


class _Renamed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(3, 4, 3)
        self.stem.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)


def _renamed_source(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = _Torchvisionish().train()
    model.backbone.bn(torch.randn(2, 4, 3, 3))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return save_sd(sd, tmp_path / "src.pt"), sd


PAIRS = {
    "backbone.conv.weight": "stem.conv.weight",
    "backbone.conv.bias": "stem.conv.bias",
    "backbone.bn.weight": "stem.bn.weight",
    "backbone.bn.bias": "stem.bn.bias",
    "backbone.bn.running_mean": "stem.bn.running_mean",
    "backbone.bn.running_var": "stem.bn.running_var",
    "backbone.bn.num_batches_tracked": "stem.bn.num_batches_tracked",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def test_align_suggest_lists_one_to_one_matches(tmp_path: Path) -> None:
    src, _ = _renamed_source(tmp_path)

    result, _ = run(src, skeleton_of(_Renamed()), {"align": "suggest"}, None, dry_run=True)

    report = result.report
    suggestions = {s["source"]: s for s in report["suggestions"]}
    assert {s: x["target"] for s, x in suggestions.items()} == PAIRS
    conv, head = suggestions["backbone.conv.weight"], suggestions["classifier.weight"]
    assert (conv["confidence"], conv["why"]) == (0.958, "name 0.50 + unique shape + shape")
    assert (head["confidence"], head["why"]) == (0.92, "name 0.00 + unique shape + shape")
    assert not any(s["ambiguous"] or s["ops"] for s in report["suggestions"])
    assert len({s["target"] for s in report["suggestions"]}) == len(PAIRS)  # one-to-one
    # suggest changes nothing
    assert _counts(report) == _summary(initialized=9, unexpected=9)
    assert report["warnings"][0].startswith("nothing_loaded")


def test_align_apply_loads_the_matches(tmp_path: Path) -> None:
    src, sd = _renamed_source(tmp_path)

    result, out = run(
        src,
        skeleton_of(_Renamed()),
        {"align": "apply", "strict": True},
        tmp_path / "out.safetensors",
    )

    report = result.report
    assert result.ok, report.get("errors")
    assert _counts(report) == _summary(loaded=9, used=9)
    assert report["suggestions"] == [] and report["unused"] == []
    for source_key, target_key in PAIRS.items():
        e = entry(report, target_key)
        assert (e["status"], e["sources"], e["rules"]) == ("loaded", [source_key], ["align"])
        assert "benign" not in e
    assert report["verification"] == {"checked": 9, "equal": 9, "strict_load": True}
    assert out is not None
    assert_same(out, {t: sd[s] for s, t in PAIRS.items()})
    assert out["stem.bn.num_batches_tracked"].item() == 1  # carried over, not re-initialised


# --- the plan itself reads headers only -------------------------------------------------------


def test_plan_reads_no_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save_sd(small_state_dict(0, classes=5), tmp_path / "src.pt")
    recipe = load_recipe({"adapt": [{"match": "fc.*", "op": "resize"}]})

    def no_reads(*_: object) -> None:
        raise AssertionError("planning read tensor data")

    with open_source(src) as source:
        monkeypatch.setattr(Source, "read", no_reads)
        plan = build_plan(source, skeleton_of(SmallNet()), recipe)

    assert plan.ok
    assert [e.status for e in plan.entries].count("loaded") == N - 2
    assert [e.target for e in plan.entries if e.status == "adapted"] == ["fc.weight", "fc.bias"]
