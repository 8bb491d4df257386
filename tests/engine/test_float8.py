"""float8 tensors through the produce path: screened for NaN/Inf, written bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.options import WriteOptions
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_float8_is_produced_screened_and_written_exactly(tmp_path: Path, fmt: str) -> None:
    # torch implements neither sum nor isfinite for float8; the produce path once crashed here.
    sd = {
        "w": torch.tensor([1.0, -2.0, float("nan")]).to(torch.float8_e4m3fn),
        "b": torch.ones(2),
    }
    save_file(sd, str(tmp_path / "s.safetensors"))
    out = tmp_path / f"o.{fmt}"
    with Target.from_checkpoint(tmp_path / "s.safetensors") as target:
        result = convert(
            tmp_path / "s.safetensors", target, load_recipe({"version": 1}), output=out,
            options=WriteOptions(format=fmt, byte_copy=False),  # type: ignore[arg-type]
        )  # fmt: skip
    assert result.ok and result.report["warnings"] == ["nan_or_inf: w"]
    assert result.report["verification"]["equal"] == 2
    written = load_file(str(out)) if fmt == "safetensors" else torch.load(out, weights_only=True)
    assert written["w"].dtype == torch.float8_e4m3fn
    assert torch.equal(written["w"].view(torch.uint8), sd["w"].view(torch.uint8))
    assert torch.equal(written["b"], sd["b"])
