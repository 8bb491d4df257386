"""``graft plan/convert SOURCE arch:NAME --target-kwargs JSON`` and ``graft architectures``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from app.cli import cli
from app.engine.architectures import bind_architecture
from tests.fixtures import REPO_ROOT

RESNET = {"depth": 18, "img_size": 32}


def _source(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "resnet.safetensors"
    save_file(bind_architecture("graft_resnet", RESNET).build("cpu").state_dict(), str(path))
    return path


def test_convert_into_an_architecture_runs_its_forward_pass(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"version": 1, "drop": ["fc.*"]}))
    kwargs = json.dumps({**RESNET, "num_classes": 10})
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(
        cli,
        ["convert", str(_source(tmp_path)), "arch:graft_resnet", "--target-kwargs", kwargs,
         "-r", str(recipe), "-o", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"]["kind"] == "architecture"
    assert report["summary"]["initialized"] == 2
    assert report["verification"]["forward"]["output_shape"] == [2, 10]
    assert load_file(str(out))["fc.weight"].shape == (10, 512)


def test_bad_kwargs_and_unknown_names_exit_2_with_one_line(tmp_path: Path) -> None:
    src = _source(tmp_path)
    env = {**os.environ, "GRAFT_ARCHITECTURES": ""}

    def graft(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from app.cli import main; main()", *args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip

    bad_json = graft("plan", str(src), "arch:graft_resnet", "--target-kwargs", "[1]")
    unknown = graft("plan", str(src), "arch:graft_resnet", "--target-kwargs", '{"widht": 8}')
    assert (bad_json.returncode, bad_json.stderr) == (
        2, "graft: error: --target-kwargs for arch:graft_resnet must be a JSON object\n",
    )  # fmt: skip
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("graft: error: architecture 'graft_resnet' has no kwarg")
    env["GRAFT_ARCHITECTURES"] = "tiny_b=tests.engine.test_architectures:TinyB,gone=no_mod:f"
    listed = graft("architectures", "--json")
    assert listed.returncode == 0, listed.stderr
    origins = {a["name"]: a["origin"] for a in json.loads(listed.stdout)}
    assert (origins["tiny_b"], origins["graft_vit"]) == ("setting", "builtin")
    # A plug-in whose import fails is listed, with its reason, instead of a traceback.
    text = graft("architectures")
    assert text.returncode == 0 and "Traceback" not in text.stderr
    assert "gone  (setting: no_mod:f)  UNAVAILABLE\n" in text.stdout
    assert "    ModuleNotFoundError: No module named 'no_mod'\n" in text.stdout
    # Docstrings' RST literals print plain.
    assert "``" not in text.stdout
    assert "    torchvision's mobilenet_v2: features (stem, 17 blocks, 1x1 conv), classifier." in (
        text.stdout
    )
    # A missing GPU is bad input: one line, exit 2, before any work.
    if not torch.cuda.is_available():
        cuda = graft("convert", str(src), "arch:graft_resnet", "--device", "cuda", "-o", "x")
        assert (cuda.returncode, cuda.stderr) == (
            2,
            "graft: error: device 'cuda' was asked for, but torch sees no CUDA device; "
            "use --device cpu or auto\n",
        )
    bad = graft("convert", str(src), "arch:graft_resnet", "--device", "gpu", "-o", "x")
    assert (bad.returncode, bad.stderr) == (
        2, "graft: error: device 'gpu' is not auto, cpu, cuda or cuda:N (e.g. cuda:0)\n",
    )  # fmt: skip


def test_source_arch_proves_a_rename_only_conversion_preserves_the_function(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(
        cli,
        ["convert", str(_source(tmp_path)), "arch:graft_resnet", "--target-kwargs",
         json.dumps(RESNET), "--source-arch", "graft_resnet", "--source-kwargs",
         json.dumps(RESNET), "--device", "cpu", "-o", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verification = json.loads(result.stdout)["verification"]
    equivalence = verification["equivalence"]
    assert (equivalence["run"], equivalence["ok"], equivalence["max_abs_diff"]) == (True, True, 0.0)
    assert verification["forward"]["device"] == "cpu"
