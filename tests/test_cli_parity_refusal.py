"""``graft convert --reference``: a parity refusal names its type, as a job's error does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from app.cli import cli
from tests.executors.parity_models import tiny_mlp

MODEL = "tests.executors.parity_models:tiny_mlp"


def _convert(tmp_path: Path, recipe: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    source = tmp_path / "tiny.pt"
    torch.save(tiny_mlp().state_dict(), source)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / "out.safetensors"
    args = ["convert", source, source, "-r", tmp_path / "recipe.json", "-o", out,
            "--reference", MODEL, "--target-module", MODEL]  # fmt: skip
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_parity_divergence_exits_1_as_parity_failed(tmp_path: Path) -> None:
    result = _convert(
        tmp_path, {"version": 1, "transform": [{"match": "0.weight", "op": "transpose"}]}
    )
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("graft: refused")] == [
        next(line for line in lines if line.startswith("graft: refused: parity: 0 diverges")),
        "graft: refused by the recipe's policy (parity-failed; see errors above)",
    ]
    assert not Path(f"{tmp_path / 'out.safetensors'}.intoto.json").exists()


def test_a_policy_refusal_stays_conversion_refused(tmp_path: Path) -> None:
    result = _convert(tmp_path, {"version": 1, "drop": ["0.*"], "strict": True})
    assert result.exit_code == 1, result.stderr
    assert "graft: refused by the recipe's policy (conversion-refused; see errors above)" in (
        result.stderr.splitlines()
    )


def test_parity_kwargs_that_are_not_a_json_object_are_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "tiny.pt"
    torch.save(tiny_mlp().state_dict(), source)
    args = ["convert", source, source, "-o", tmp_path / "out.safetensors",
            "--reference", MODEL, "--reference-kwargs", "[1]"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.stderr
    assert "--reference-kwargs must be a JSON object" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()
