"""docs/assembly.md runs as written: its Python blocks make the checkpoints (with transformers
itself), its YAML blocks are the recipes (named by their first-line comment), its ``sh`` blocks
run ``graft`` as a real process; the results equal the models assembled in plain torch and
by transformers' own ``from_encoder_decoder_pretrained``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.fixtures import REPO_ROOT
from tests.parts import import_part

transformers: Any = import_part("transformers", "transformers", "make setup installs it")

DOC = REPO_ROOT / "docs" / "assembly.md"


def blocks(text: str, lang: str) -> list[str]:
    """The fenced blocks of one language, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _python(argv: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """This interpreter run with ``argv`` in ``folder``, its output captured."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_docs(
    text: str, folder: Path, *, python: bool = True
) -> list[subprocess.CompletedProcess[str]]:
    """Write the recipes, run the Python blocks (unless not ``python``), then every ``graft``
    command of the ``sh`` blocks, in ``folder``."""
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for block in blocks(text, "yaml"):
        name = re.match(r"# (\S+\.yaml)\n", block)
        assert name, f"a YAML block in the docs names its file in its first line: {block[:40]}"
        (folder / name.group(1)).write_text(block)
    for block in blocks(text, "python") if python else []:
        done = _python(["-c", block], folder, env)
        assert done.returncode == 0, done.stderr[-2000:]
    runs = []
    for block in blocks(text, "sh"):
        for line in block.splitlines():
            if not line.startswith("graft "):
                continue
            argv = ["-c", "from app.cli import main; main()", *shlex.split(line)[1:]]
            runs.append(_python(argv, folder, env))
            assert runs[-1].returncode == 0, (line, runs[-1].stderr[-2000:])
    return runs


def test_the_assembly_docs_run_and_give_the_models_assembled_by_hand(tmp_path: Path) -> None:
    text = DOC.read_text()
    runs = run_docs(text, tmp_path)
    assert len(runs) == 3
    a = load_file(tmp_path / "gpt2-a" / "model.safetensors")
    b = load_file(tmp_path / "gpt2-b" / "model.safetensors")
    stacked = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "stacked")
    expected = {k: v for k, v in a.items() if not k.startswith("transformer.h.")}
    for layer in range(12):
        theirs = a if layer < 6 else b
        expected |= {k: v for k, v in theirs.items() if k.startswith(f"transformer.h.{layer}.")}
    state = stacked.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(state["lm_head.weight"], a["transformer.wte.weight"])  # tied, as saved
    # The plan names each source: `source` is a list and entries say which one fed them.
    assert "source a: safetensors" in runs[1].stdout
    assert "<- b:transformer.h.{6..11}" in runs[1].stdout
    # The captioner equals transformers' own assembly, key for key.
    ours = load_file(tmp_path / "captioner-assembled" / "model.safetensors")
    theirs = load_file(tmp_path / "captioner" / "model.safetensors")
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    model = transformers.VisionEncoderDecoderModel.from_pretrained(tmp_path / "captioner-assembled")
    assert model.config.decoder.add_cross_attention
