"""Torch-free paths of the engine (its import rules are in ``tests/test_house_imports.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.fixtures import REPO_ROOT, save_hf_sharded_safetensors, tiny_state_dict

_PROBE = """
import json, sys
from app.engine.readers import inspect_source
out = {p: inspect_source(p)["totals"]["tensors"] for p in sys.argv[1:]}
out["torch_modules"] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps(out))
"""


def test_header_inspection_never_imports_torch(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(sd, str(tmp_path / "one.safetensors"))
    index = save_hf_sharded_safetensors(sd, tmp_path / "set", shards=2)
    paths = [str(tmp_path / n) for n in ("zip.pt", "legacy.pth", "one.safetensors")] + [str(index)]
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *paths],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**dict.fromkeys(paths, 12), "torch_modules": []}
