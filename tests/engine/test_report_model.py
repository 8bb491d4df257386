"""The typed report: its JSON form is the published document, warnings keep their kind, and
the shipped JSON Schemas are the ones the models generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.progress import ProgressEvent, TensorCounts
from app.engine.report import Report, Warning
from app.engine.schemas import SCHEMA_NAMES, load_schema
from app.engine.schemas.generate import SCHEMA_FOLDER, generate_schema, schema_text
from tests.engine._models import run, save_sd, small_state_dict, template_of
from tests.schemas import assert_valid


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_the_shipped_schemas_are_the_generated_ones(name: str) -> None:
    # After changing a model: python -m app.engine.schemas
    assert (SCHEMA_FOLDER / f"{name}.json").read_text(encoding="utf-8") == schema_text(name)
    assert load_schema(name) == generate_schema(name)


def _report(tmp_path: Path) -> dict:
    """A report with an entry of every kind of fate, a rule that matched nothing (a warning),
    an output section and a verification."""
    sd = small_state_dict(0, classes=1000)
    src = save_sd({"backbone." + k: v for k, v in sd.items()}, tmp_path / "src.pt")
    target = template_of({**small_state_dict(1)}, tmp_path / "t.safetensors")
    recipe = {
        "rename": [{"prefix": "backbone.", "to": ""}, {"prefix": "nowhere.", "to": ""}],
        "adapt": [{"match": "fc.weight", "op": "resize"}, {"match": "fc.bias", "op": "resize"}],
        "unmatched": "warn",
    }
    result, _ = run(src, target, recipe, tmp_path / "out.safetensors")
    return result.report


def test_a_report_reads_back_into_the_same_document(tmp_path: Path) -> None:
    document = _report(tmp_path)
    report = Report.from_json(document)
    again = report.to_json()
    assert again == document
    assert json.dumps(again, indent=2) == json.dumps(document, indent=2)  # key order too
    assert [(w.kind, w.message) for w in report.warnings] == [
        ("unmatched", "rename[1] (prefix 'nowhere.') matched no key; check it for a typo"),
    ]
    assert document["warnings"] == [
        "unmatched: rename[1] (prefix 'nowhere.') matched no key; check it for a typo"
    ]
    assert_valid("report", document)


def test_a_warning_is_a_kind_and_a_message_written_as_one_string() -> None:
    warning = Warning(kind="nan_or_inf", message="fc.weight")
    assert str(warning) == "nan_or_inf: fc.weight"
    assert warning.model_dump() == "nan_or_inf: fc.weight"
    assert Warning.model_validate("low_coverage: only 1 of 9: see") == Warning(
        kind="low_coverage", message="only 1 of 9: see"
    )
    with pytest.raises(ValueError, match="kind"):
        Warning.model_validate("bogus: text")
    with pytest.raises(ValueError, match="frozen"):
        warning.kind = "unmatched"  # type: ignore[misc]


def test_a_progress_event_crosses_a_process_as_json() -> None:
    plain = ProgressEvent("plan", 0.0)
    counted = ProgressEvent(
        "write", 0.5, TensorCounts(tensors_done=1, tensors_total=2, bytes_done=8)
    )
    assert plain.to_json() == {"stage": "plan", "fraction": 0.0}
    assert counted.to_json() == {
        "stage": "write", "fraction": 0.5, "tensors_done": 1, "tensors_total": 2, "bytes_done": 8,
    }  # fmt: skip
    for event in (plain, counted):
        assert ProgressEvent.from_json({"event": "progress", **event.to_json()}) == event


def test_hints_and_the_arch_default_rule_fit_the_schema(tmp_path: Path) -> None:
    document = {
        "source": "enc.weight", "reason": "unexpected", "rule": None,
        "hint": {"candidate": "encoder.weight", "confidence": 0.92,
                 "paste": "rename: [{key: enc.weight, to: encoder.weight}]"},
    }  # fmt: skip
    report = _report(tmp_path)
    report["unused"] = [document]
    report["entries"][0] = {**report["entries"][0], "hint": document["hint"] | {"candidate": "x"}}
    report["rules"].append({"rule": "arch-default", "matched": 3, "applied": 1, "pattern": "p"})
    assert_valid("report", report)
    assert Report.from_json(report).to_json() == report
    without = {k: v for k, v in document.items() if k != "hint"}
    assert Report.from_json({**report, "unused": [without]}).to_json()["unused"] == [without]
    with pytest.raises(ValueError, match="rule"):
        Report.from_json({**report, "rules": [{**report["rules"][-1], "rule": "arch"}]})
