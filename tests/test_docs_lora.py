"""docs/lora.md runs as written, on a real PEFT adapter: its ``graft lora merge|unmerge``
commands and the conversion whose recipe merges the adapter as a step; the merged folder
loads with ``AutoModel.from_pretrained`` and equals PEFT's ``merge_and_unload``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.engine.test_lora import _assert_close_to_peft
from tests.engine.test_lora_step import bert_with_adapter
from tests.fixtures import REPO_ROOT
from tests.parts import import_part
from tests.test_docs_assembly import run_docs

transformers: Any = import_part("transformers", "transformers", "make setup installs it")


def test_the_lora_docs_run_and_merge_as_peft_does(tmp_path: Path) -> None:
    merged = bert_with_adapter(tmp_path, saved=False)  # so that `unmerge` applies
    shutil.move(tmp_path / "bert", tmp_path / "bert-base")
    shutil.move(tmp_path / "adapter", tmp_path / "my-adapter")
    runs = run_docs((REPO_ROOT / "docs" / "lora.md").read_text(), tmp_path, python=False)
    assert len(runs) == 3  # merge, unmerge, and the conversion with a `lora` step
    out = tmp_path / "bert-merged"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json"}
    _assert_close_to_peft(load_file(out / "model.safetensors"), merged)
    model = transformers.AutoModel.from_pretrained(out)
    state = model.state_dict()
    for key, value in load_file(out / "model.safetensors").items():
        assert torch.equal(state[key], value), key
    assert "lora" in runs[2].stdout  # the report's rules list the step
