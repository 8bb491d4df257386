"""A Graft-signed output verifies with the OpenSSF ``model_signing`` tool and the public key,
offline, and is rejected once one byte is flipped (SPEC §3.3).

``model_signing`` runs from its own venv (``make model-signing-venv``:
``$GRAFT_TEST_MODEL_SIGNING_VENV``, by default ``~/.cache/graft/model-signing-1.1.1``), never
Graft's; without it these tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.engine._models import SmallNet, save_sd, small_state_dict
from tests.parts import require_part
from tests.test_cli_verify import _keys, graft

VENV = Path(
    os.environ.get(
        "GRAFT_TEST_MODEL_SIGNING_VENV", Path.home() / ".cache/graft/model-signing-1.1.1"
    )
).expanduser()
MODEL_SIGNING = VENV / "bin" / "model_signing"


def _verify(model: Path, signature: Path, public: Path) -> subprocess.CompletedProcess[str]:
    if not MODEL_SIGNING.exists():
        require_part("model_signing", f"none at {MODEL_SIGNING}: run `make model-signing-venv`")
    argv = [str(MODEL_SIGNING), "verify", "key", str(model), "--signature", str(signature),
            "--public_key", str(public)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("sharded", [False, True])
def test_model_signing_verifies_a_graft_signed_output_and_rejects_a_flipped_byte(
    tmp_path: Path, sharded: bool
) -> None:
    from app.engine.target import skeleton_from_module

    private, public = _keys(tmp_path, "ecdsa", "signer")
    src = save_sd(small_state_dict(0), tmp_path / "src.pt")
    skeleton = tmp_path / "skeleton.json"
    skeleton.write_text(json.dumps(skeleton_from_module(SmallNet())))
    out = tmp_path / ("shards" if sharded else "out.safetensors")
    shards = ["--max-shard-size", "300"] if sharded else []
    run = graft("convert", src, skeleton, "-o", out, "--sign-key", private, *shards)
    assert run.returncode == 0, run.stderr
    signature = out / "model.sig" if sharded else tmp_path / "model.sig"
    ok = _verify(out, signature, public)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    weights = sorted(out.glob("*.safetensors"))[-1] if sharded else out
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    refused = _verify(out, signature, public)
    assert refused.returncode != 0
    assert "Verification failed" in refused.stdout + refused.stderr
