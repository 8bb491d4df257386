"""Several sources, folder outputs and DCP outputs through a real ``graft serve``: a job with
``"sources": {"a": id, "b": id}`` (POST /v1/jobs) and ``graft submit a=… b=…`` assemble the
model the plain-torch assembly gives; ``--folder`` into ``arch:graft_bert`` comes back as a
folder ``AutoModel.from_pretrained`` loads; ``--format dcp`` as a folder
``torch.distributed.checkpoint`` loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.conftest import REPO, Server
from tests.engine.test_several_sources import save_gpt2
from tests.parts import import_part

transformers: Any = import_part("transformers", "transformers", "make setup installs it")

STACK = {
    "version": 1,
    "sources": {"a": {}, "b": {}},
    "slices": [{"from": "a", "layers": [0, 2]}, {"from": "b", "layers": [2, 4]}],
    "rename": [{"prefix": "a:", "to": ""}],
    "drop": ["b:*"],
    "strict": True,
}


def expected_stack(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Layers 0-1 of a, 2-3 of b, the rest of a: assembled in plain torch."""
    out = {k: v for k, v in a.items() if not k.startswith("transformer.h.")}
    for layer in range(4):
        theirs = a if layer < 2 else b
        out |= {k: v for k, v in theirs.items() if k.startswith(f"transformer.h.{layer}.")}
    out.pop("lm_head.weight", None)  # tied: save_pretrained stores it once
    return out


@pytest.fixture(scope="module")
def gpt2s(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gpt2s")
    return {
        "root": root,
        "a": save_gpt2(1, root / "gpt2-a"),
        "b": save_gpt2(2, root / "gpt2-b"),
    }


def _submit(server: Server, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "submit",
         *map(str, args), "--server", server.url],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def _upload(client: Any, path: Path) -> str:
    with path.open("rb") as f:
        response = client.post("/v1/checkpoints", files={"file": (path.name, f)})
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def test_a_job_takes_several_sources_by_name(
    server: Server, gpt2s: dict[str, Any], tmp_path: Path
) -> None:
    root = gpt2s["root"]
    with server.client() as client:
        a = _upload(client, root / "gpt2-a" / "model.safetensors")
        b = _upload(client, root / "gpt2-b" / "model.safetensors")
        both = client.post(
            "/v1/jobs", json={"source": a, "sources": {"a": a}, "target": {"checkpoint": a}}
        )
        unnamed = client.post(
            "/v1/jobs", json={"sources": {"a": a}, "target": {"checkpoint": a}, "recipe": STACK}
        )
        created = client.post(
            "/v1/jobs",
            json={"sources": {"a": a, "b": b}, "target": {"checkpoint": a}, "recipe": STACK},
        )
        assert created.status_code == 202, created.text
        job = server.wait(client, created.json()["id"])
        assert job["status"] == "succeeded", (job["error"], server.log.read_text()[-3000:])
        assert job["sources"] == {"a": a, "b": b} and job["source"] is None
        weights = client.get(f"/v1/jobs/{job['id']}/weights").content
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
        plan = client.post(
            "/v1/plans",
            json={"sources": {"a": a, "b": b}, "target": {"checkpoint": a}, "recipe": STACK},
        )
        unplanned = client.post(
            "/v1/plans", json={"sources": {"a": a}, "target": {"checkpoint": a}, "recipe": STACK}
        )
    assert plan.status_code == 200, plan.text
    assert [s["name"] for s in plan.json()["source"]] == ["a", "b"]
    planned = {e["target"]: e["sources"] for e in plan.json()["entries"]}
    assert planned == {e["target"]: e["sources"] for e in report["entries"]}
    assert planned["transformer.h.3.attn.c_attn.weight"] == ["b:transformer.h.3.attn.c_attn.weight"]
    assert unplanned.status_code == 422 and "missing: b" in unplanned.text
    assert both.status_code == 422
    assert unnamed.status_code == 422 and "the recipe names a, b" in unnamed.text
    (tmp_path / "w.safetensors").write_bytes(weights)
    got = load_file(tmp_path / "w.safetensors")
    expected = expected_stack(gpt2s["a"], gpt2s["b"])
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert [(s["name"], len(s["sha256"])) for s in report["source"]] == [("a", 64), ("b", 64)]


def test_graft_submit_uploads_each_named_source(
    server: Server, gpt2s: dict[str, Any], tmp_path: Path
) -> None:
    root = gpt2s["root"]
    recipe = tmp_path / "stack.json"
    recipe.write_text(json.dumps(STACK))
    a, b = root / "gpt2-a", root / "gpt2-b"
    run = _submit(
        server, f"a={a}", f"b={b}", a / "model.safetensors", "-r", recipe,
        "-o", "stacked.safetensors", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = load_file(tmp_path / "stacked.safetensors")
    expected = expected_stack(gpt2s["a"], gpt2s["b"])
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    report = json.loads((tmp_path / "stacked.report.json").read_text())
    assert [s["name"] for s in report["source"]] == ["a", "b"]


BERT = {
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 24,
}  # fmt: skip


def test_folder_and_dcp_outputs_come_back_as_folders(server: Server, tmp_path: Path) -> None:
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(**BERT)).eval()
    bert.save_pretrained(tmp_path / "bert")
    expected = load_file(tmp_path / "bert" / "model.safetensors")
    kwargs = json.dumps(BERT)
    folder = _submit(
        server, tmp_path / "bert", "arch:graft_bert", "--target-kwargs", kwargs, "--folder",
        "-o", "bert-out", cwd=tmp_path,
    )  # fmt: skip
    assert folder.returncode == 0, folder.stderr
    assert {p.name for p in (tmp_path / "bert-out").iterdir()} >= {
        "config.json",
        "model.safetensors",
    }
    loaded = transformers.AutoModel.from_pretrained(tmp_path / "bert-out").eval()
    state = loaded.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key

    dcp_out = _submit(
        server, tmp_path / "bert", "arch:graft_bert", "--target-kwargs", kwargs,
        "--format", "dcp", "-o", "bert-dcp", cwd=tmp_path,
    )  # fmt: skip
    assert dcp_out.returncode == 0, dcp_out.stderr
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty_like(v) for k, v in expected.items()}
    assert sorted(os.listdir(tmp_path / "bert-dcp")) == [".metadata", "__0_0.distcp"]
    with warnings.catch_warnings():  # "torch.distributed is not initialized": one process
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(tmp_path / "bert-dcp"))
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_graft_submit_merges_a_lora_adapter_as_peft_does(server: Server, tmp_path: Path) -> None:
    from tests.engine.test_lora import _assert_close_to_peft
    from tests.engine.test_lora_step import bert_with_adapter

    merged = bert_with_adapter(tmp_path)
    # The recipe docs/lora.md shows, its paths as there.
    (tmp_path / "bert").rename(tmp_path / "bert-base")
    (tmp_path / "adapter").rename(tmp_path / "my-adapter")
    text = (REPO / "docs" / "lora.md").read_text()
    recipe = re.search(r"```yaml\n(# merge\.yaml\n.*?)```", text, flags=re.S)
    assert recipe is not None
    (tmp_path / "merge.yaml").write_text(recipe.group(1))
    run = _submit(
        server, "base=./bert-base", "adapter=./my-adapter", "./bert-base", "-r", "merge.yaml",
        "-o", "bert-merged.safetensors", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    _assert_close_to_peft(load_file(tmp_path / "bert-merged.safetensors"), merged)
    report = json.loads((tmp_path / "bert-merged.report.json").read_text())
    assert any(r["rule"] == "lora" for r in report["rules"])
