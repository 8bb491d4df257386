"""The report (``graft.report/v1``): its shape, its counts, its digests, and the grouped
human form."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import torch

from app.engine.keys import group_keys
from app.engine.report import render_text
from tests.engine._models import (
    SmallNet,
    entry,
    run,
    save_sd,
    skeleton_of,
    small_state_dict,
    template_of,
)

N = len(small_state_dict())
ENTRY_FIELDS = {
    "target",
    "status",
    "sources",
    "rules",
    "ops",
    "shape",
    "source_shape",
    "dtype",
    "digest",
}


def _mixed(tmp_path: Path, **kwargs: object) -> tuple[dict, dict[str, torch.Tensor]]:
    """A conversion with every status: renamed + loaded, adapted, initialized, kept, dropped,
    unexpected."""
    sd = small_state_dict(0, classes=1000)
    source = {"backbone." + k: v for k, v in sd.items()}
    source["backbone.aux.weight"] = torch.ones(3)  # unexpected
    source["backbone.fc.bias"] = torch.ones(1000)  # dropped below
    src = save_sd(source, tmp_path / "src.pt")
    template = {**small_state_dict(1), "extra.scale": torch.full((2,), 7.0)}  # kept
    template.pop("bn1.running_var")
    target = template_of(template, tmp_path / "template.safetensors")
    recipe = {
        "rename": [{"prefix": "backbone.", "to": ""}],
        "drop": ["fc.bias"],
        "adapt": [{"match": "fc.weight", "op": "resize"}],
    }
    result, out = run(src, target, recipe, tmp_path / "out.safetensors", **kwargs)
    return result.report, out or {}


def test_report_schema_and_counts(tmp_path: Path) -> None:
    report, out = _mixed(tmp_path)

    assert list(report) == [
        "schema",
        "ok",
        "source",
        "target",
        "summary",
        "entries",
        "unused",
        "suggestions",
        "rules",
        "warnings",
        "verification",
        "output",
    ]
    assert report["schema"] == "graft.report/v1" and report["ok"] is True
    assert report["source"]["format"] == "torch-zip"
    assert report["source"]["tensors"] == N + 1
    assert report["target"]["kind"] == "template"
    assert report["target"]["tensors"] == N  # minus running_var, plus extra.scale
    summary = report["summary"]
    assert {k: v for k, v in summary.items() if k != "coverage"} == {
        "loaded": N - 3,  # everything but fc.*, bn1.running_var (absent) and extra.scale
        "adapted": 1,
        "tied": 0,
        "initialized": 0,
        "kept": 2,  # fc.bias (its source dropped) and extra.scale
        "used": N - 2,
        "dropped": 1,
        "unexpected": 2,  # aux.weight and the target-less bn1.running_var
        "mismatched": 0,
    }
    fed = N - 2
    assert summary["coverage"]["tensors"] == round(fed / N, 4)
    total = sum(v.numel() for v in out.values())
    kept_elements = out["fc.bias"].numel() + out["extra.scale"].numel()
    assert summary["coverage"]["elements"] == round((total - kept_elements) / total, 6)
    assert {(u["source"], u["reason"], u["rule"]) for u in report["unused"]} == {
        ("backbone.fc.bias", "dropped", "drop[0]"),
        ("backbone.aux.weight", "unexpected", None),
        ("backbone.bn1.running_var", "unexpected", None),
    }
    rederived = {"checked": 3, "how": {"overlap": 1, "template": 2}, "unequal": []}
    assert report["verification"] == {
        "checked": N - 2, "equal": N - 2, "strict_load": True, "rederived": rederived,
    }  # fmt: skip
    assert sum(1 for e in report["entries"] if e["status"] in ("loaded", "adapted")) == N - 2


def test_report_entries(tmp_path: Path) -> None:
    report, out = _mixed(tmp_path)

    assert [e["target"] for e in report["entries"]] == list(out)  # the output's order
    for e in report["entries"]:
        assert set(e) == ENTRY_FIELDS, e["target"]
        data = out[e["target"]].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert e["digest"] == "blake3:" + blake3.blake3(data).hexdigest(), e["target"]
    conv = entry(report, "layer1.0.conv1.weight")
    assert conv == conv | {
        "status": "loaded",
        "sources": ["backbone.layer1.0.conv1.weight"],
        "rules": ["rename[0]"],
        "ops": [],
        "shape": [4, 4, 3, 3],
        "source_shape": [4, 4, 3, 3],
        "dtype": "float32",
    }
    fc = entry(report, "fc.weight")
    assert (fc["status"], fc["rules"], fc["ops"]) == (
        "adapted",
        ["rename[0]", "adapt[0]"],
        ["resize([1000, 4]->[10, 4], fill=zeros)"],
    )
    kept = entry(report, "extra.scale")
    assert (kept["status"], kept["sources"], kept["rules"], kept["source_shape"]) == (
        "kept",
        [],
        [],
        None,
    )
    assert torch.equal(out["extra.scale"], torch.full((2,), 7.0))
    assert json.loads(json.dumps(report)) == report  # plain JSON all the way down


def test_dry_run_report_has_no_digests_or_verification(tmp_path: Path) -> None:
    report, out = _mixed(tmp_path, dry_run=True)
    assert out == {} and not (tmp_path / "out.safetensors").exists()
    written, _ = _mixed(tmp_path)

    assert report["verification"] is None and "output" not in report
    assert {e["digest"] for e in report["entries"]} == {None}
    assert report["summary"] == written["summary"]
    strip = ("digest",)
    assert [{k: v for k, v in e.items() if k not in strip} for e in report["entries"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in written["entries"]
    ]


def test_initialized_entries_record_fn_args_and_seed(tmp_path: Path) -> None:
    src = save_sd({"fc.weight": torch.ones(10, 4)}, tmp_path / "src.pt")
    recipe = {
        "seed": 11,
        "init": [
            {"match": "fc.bias", "fn": "normal", "std": 0.5},
            {"match": "*", "fn": "auto"},
        ],
    }

    result, _ = run(src, skeleton_of(SmallNet()), recipe, tmp_path / "out.safetensors")

    bias = entry(result.report, "fc.bias")
    assert (bias["status"], bias["rules"], bias["ops"]) == (
        "initialized",
        ["init[0]"],
        ["init(normal)"],
    )
    assert bias["init"] == {"fn": "normal", "args": {"mean": 0.0, "std": 0.5}, "seed": 11}
    conv = entry(result.report, "conv1.weight")
    assert conv["rules"] == ["init[1]"] and conv["init"]["fn"] == "kaiming_normal"


BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _one_pattern(keys: list[str]) -> str:
    """The grouped form of ``keys``, which must collapse into one pattern."""
    (group,) = group_keys(keys)
    return group.pattern


def test_text_report_groups_keys(tmp_path: Path) -> None:
    sd = small_state_dict(0)
    src = save_sd({"backbone." + k: v for k, v in sd.items()}, tmp_path / "src.pt")
    recipe = {"strict": True, "rename": [{"prefix": "backbone.", "to": ""}]}

    result, _ = run(src, skeleton_of(SmallNet()), recipe, tmp_path / "out.safetensors")
    text = render_text(result.report)

    lines = text.splitlines()
    assert lines[0] == "graft report: OK"
    assert f"target keys  loaded {N} · adapted 0 · tied 0 · initialized 0 · kept 0" in lines
    assert f"source keys  used {N} · dropped 0 · unexpected 0 · mismatched 0" in lines
    assert "coverage     100% of tensors, 100% of elements" in lines
    assert f"loaded ({N})" in lines
    convs = _one_pattern([f"layer1.{b}.conv{c}.weight" for b in (0, 1) for c in (1, 2)])
    assert convs.startswith("layer1.{0..1}.conv")  # four keys on one line
    assert f"  {convs}  <- backbone.{convs}  [rename[0]]" in lines
    norms = _one_pattern(
        [f"layer1.{b}.bn{n}.{leaf}" for b in (0, 1) for n in (1, 2) for leaf in BN_LEAVES]
    )
    assert f"  {norms}  <- backbone.{norms}  [rename[0]]" in lines
    assert lines[-1] == f"verification  {N}/{N} equal to the source, strict load ok"
    assert len(lines) < 21  # 32 keys, grouped (and the rules table with its header)


def test_text_report_of_a_refusal(tmp_path: Path) -> None:
    src = save_sd({**small_state_dict(0), "aux.weight": torch.ones(2)}, tmp_path / "src.pt")

    result, _ = run(src, skeleton_of(SmallNet()), {"strict": True}, tmp_path / "out.safetensors")
    text = render_text(result.report)

    assert text.splitlines()[0] == "graft report: FAILED"
    assert "  unexpected aux.weight" in text
    assert "errors\n  x strict: source keys not used: aux.weight" in text
    assert "verification" not in text  # nothing was written, nothing verified


def test_text_report_ends_with_a_newline_and_names_the_target_once(tmp_path: Path) -> None:
    src = save_sd(small_state_dict(0), tmp_path / "src.pt")
    result, _ = run(src, skeleton_of(SmallNet()), {}, tmp_path / "out.safetensors")
    text = render_text(result.report)
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert text.splitlines()[2] == f"target  skeleton, {N} tensors"
