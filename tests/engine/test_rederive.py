"""Verification re-derives what it did not copy (issue 21, item 4): an op that writes the wrong
values is caught by checks independent of its code, not re-digested against itself. The
audit's own sabotage is seeded here: the op is replaced by one that writes 123.0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import app.engine.produce as produce
from tests.engine._models import SmallNet, run, save_sd, skeleton_of, small_state_dict


def _sabotage(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = getattr(produce, name)

    def wrong(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        value = out[0] if isinstance(out, tuple) else out
        bad = torch.full_like(value, 123.0)
        return (bad, *out[1:]) if isinstance(out, tuple) else bad

    monkeypatch.setattr(produce, name, wrong)


@pytest.mark.parametrize("fill", ["zeros", "repeat"])
def test_a_channels_op_writing_123_everywhere_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fill: str
) -> None:
    _sabotage(monkeypatch, "apply_adapt")
    src = save_sd(small_state_dict(0), tmp_path / "src.pt")
    recipe = {"adapt": [{"match": "conv1.weight", "op": "channels", "fill": fill}]}
    result, _ = run(src, skeleton_of(SmallNet(in_chans=4)), recipe, tmp_path / "out.safetensors")
    report = result.report
    how = "overlap" if fill == "zeros" else "recomputed"
    problem = ("the block it shares with the source differs from it" if fill == "zeros"
               else "differs from timm's adapt_input_conv of the source")  # fmt: skip
    assert report["ok"] is False
    assert report["verification"]["rederived"] == {
        "checked": 1, "how": {how: 1}, "unequal": [f"conv1.weight: {problem}"],
    }  # fmt: skip
    assert f"verification: conv1.weight: {problem}" in report["errors"]


def test_a_transform_writing_123_everywhere_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sabotage(monkeypatch, "apply_transform")
    sd = small_state_dict(0)
    src = save_sd({**sd, "fc.weight": sd["fc.weight"].t().contiguous()}, tmp_path / "src.pt")
    recipe = {"transform": [{"match": "fc.weight", "op": "transpose"}]}
    result, _ = run(src, skeleton_of(SmallNet()), recipe, tmp_path / "out.safetensors")
    report = result.report
    assert report["ok"] is False
    assert report["verification"]["rederived"]["unequal"] == [
        "fc.weight: differs from the source after its declared ops"
    ]
