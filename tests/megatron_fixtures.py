"""Megatron-LM checkpoints written by Megatron-Core itself, cached once per machine.

``tests/engine/readers/megatron_writer.py`` runs in Megatron-Core 0.19.2's own venv
(``make megatron-venv``: ``$GRAFT_TEST_MEGATRON_VENV``, by default
``~/.cache/graft/megatron-core-0.19.2``, Python 3.12), never in Graft's: Megatron stays out of
Graft's dependencies. Each kind of model is written once per machine and version of the writer
(4 gloo processes on 2 shared cores take minutes), under a lock, so test modules and
parallel workers share one copy. Each fixture folder holds ``legacy/`` (the ``torch`` format),
``dist/`` (``dist_checkpointing`` with the ``torch_dist`` backend) and ``reference.pt``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MEGATRON_VENV", "VOCAB", "WRITER", "megatron_checkpoint", "unsplit_state"]

MEGATRON_VENV = Path(
    os.environ.get("GRAFT_TEST_MEGATRON_VENV", Path.home() / ".cache/graft/megatron-core-0.19.2")
).expanduser()
WRITER = Path(__file__).parent / "engine" / "readers" / "megatron_writer.py"
VOCAB = 100  # the writer's true vocabulary (the embedding holds it padded to 128)


def _key() -> str:
    """What the cached fixtures depend on: the writer's code and the venv."""
    digest = hashlib.sha256(WRITER.read_bytes())
    digest.update(str(MEGATRON_VENV.resolve()).encode())
    return digest.hexdigest()[:16]


def megatron_checkpoint(kind: str) -> Path:
    """The cached fixture folder of ``kind`` (``gpt``: GQA, SwiGLU, RMSNorm, RoPE; ``gpt2``:
    learned positions, LayerNorm, GELU, biases, tied embeddings), written once per machine;
    skips (fails under CI) without the Megatron venv."""
    from tests.parts import require_part

    python = MEGATRON_VENV / "bin" / "python"
    if not python.exists():
        require_part("Megatron-Core", f"no venv at {MEGATRON_VENV}: run `make megatron-venv`")
    root = Path(tempfile.gettempdir()) / f"graft-megatron-fixtures-{_key()}"
    root.mkdir(exist_ok=True)
    done = root / kind
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per machine; the others wait, then reuse
        if not (done / "reference.pt").exists():
            building = root / f"building-{kind}"
            shutil.rmtree(building, ignore_errors=True)
            written = subprocess.run(
                [str(python), str(WRITER), str(building), kind],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            if written.returncode != 0:
                raise RuntimeError(f"the Megatron writer failed:\n{written.stderr[-4000:]}")
            shutil.rmtree(done, ignore_errors=True)
            building.rename(done)
    return done


def unsplit_state(reference: dict[str, Any]) -> dict[str, Any]:
    """The unsplit model's tensors (``reference.pt``'s ``state_dict``), its vocab rows cut to
    the true vocab: what Graft's merged view of the TP x PP checkpoint must equal."""
    state = dict(reference["state_dict"])
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if key in state:
            state[key] = state[key][:VOCAB]
    return state
