"""DeepSpeed ZeRO checkpoints written by DeepSpeed itself: 2 ranks on gloo, on the CPU.

Run with the DeepSpeed venv's python (``make deepspeed-venv``: ``$GRAFT_TEST_DEEPSPEED_VENV``,
by default ``~/.cache/graft/deepspeed-0.19.8``), never Graft's: DeepSpeed stays out of Graft's
dependencies. :func:`save_zero` runs this file as a script under ``torch.distributed.run``;
each rank builds the same seeded model (a frozen Linear, an embedding tied to the output head,
a persistent buffer, two param groups, odd sizes so partitions are padded),
``deepspeed.initialize`` with bf16 and ZeRO stage 1, 2 or 3, takes two optimizer steps and
calls ``save_checkpoint`` into ``<path>/ckpt`` (``latest`` and ``global_step2/``). Rank 0
then writes DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` to
``<path>/reference.pt`` (the reference every conversion is compared with) and the model
states' ``module`` to ``<path>/module.pt``.

This file imports no DeepSpeed at module level, so the tests can import :func:`save_zero`.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "DEEPSPEED_PYTHON",
    "MODULE",
    "REFERENCE",
    "STAGES",
    "fixture_key",
    "save_zero",
    "zero_checkpoint",
]

DEEPSPEED_VENV = Path(
    os.environ.get("GRAFT_TEST_DEEPSPEED_VENV", Path.home() / ".cache/graft/deepspeed-0.19.8")
).expanduser()
DEEPSPEED_PYTHON = DEEPSPEED_VENV / "bin" / "python"
REFERENCE = "reference.pt"  # DeepSpeed's own merged fp32 state dict, beside the checkpoint
MODULE = "module.pt"  # the model states' "module" entry, as torch.load (with DeepSpeed) reads it
STAGES = (1, 2, 3)


def fixture_key() -> str:
    """What the cached fixtures depend on: the code that writes them, and the venv."""
    digest = hashlib.sha256(inspect.getsource(_model).encode())
    digest.update(inspect.getsource(_train_and_save).encode())
    digest.update(str(DEEPSPEED_VENV.resolve()).encode())
    return digest.hexdigest()[:16]


def save_zero(path: Path, stage: int) -> None:
    """Save a ZeRO ``stage`` checkpoint to ``path/ckpt`` from 2 real gloo processes, and
    DeepSpeed's own merge of it to ``path/reference.pt``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "DS_BUILD_OPS": "0",
        "PYTHONPATH": "",
    }
    cmd = [str(DEEPSPEED_PYTHON), "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node=2", __file__, str(stage), str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"DeepSpeed fixture failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    if "built successfully" in done.stdout:  # an op was compiled after all
        raise RuntimeError(f"DeepSpeed compiled an op while saving the fixture:\n{done.stdout}")


def zero_checkpoint(stage: int) -> Path:
    """The cached fixture folder of ``stage`` (``ckpt/``, ``reference.pt``, ``module.pt``),
    written once per machine and script version; skips (fails under CI) without DeepSpeed."""
    from tests.parts import require_part

    if not DEEPSPEED_PYTHON.exists():
        require_part("DeepSpeed", f"no venv at {DEEPSPEED_VENV}: run `make deepspeed-venv`")
    root = Path(tempfile.gettempdir()) / f"graft-zero-fixtures-{fixture_key()}"
    root.mkdir(exist_ok=True)
    done = root / f"stage{stage}"
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per machine; the others wait, then reuse
        if not (done / MODULE).exists():
            building = root / f"building{stage}"
            shutil.rmtree(building, ignore_errors=True)
            save_zero(building, stage)
            shutil.rmtree(done, ignore_errors=True)
            building.rename(done)
    return done


def _model():  # type: ignore[no-untyped-def]
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(13, 6)
            self.frozen = torch.nn.Linear(6, 5)  # not trained: saved apart from the partitions
            self.frozen.requires_grad_(False)
            self.body = torch.nn.Linear(5, 7)
            self.norm = torch.nn.LayerNorm(7)
            self.up = torch.nn.Linear(7, 6)
            self.head = torch.nn.Linear(6, 13, bias=False)
            self.head.weight = self.embed.weight  # tied: one tensor, two names
            self.register_buffer("scale", torch.tensor([0.5, 2.0, 1.25]))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            x = self.norm(self.body(self.frozen(x)))
            return self.head(self.up(x) * self.scale[0])  # type: ignore[index]

    torch.manual_seed(0)
    return Tiny()


def _train_and_save(stage: int, out: str) -> None:
    import importlib

    import deepspeed
    import torch

    # gloo alone: DeepSpeed's optional shared-memory allreduce would compile C++ (~100 s).
    # (``deepspeed.comm.torch`` as an attribute is the torch package: import the module.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    model = _model()
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 1000,
    }
    if stage == 1:  # bf16 accumulation keeps stage 1 on the ZeRO optimizer (not BF16_Optimizer)
        config["data_types"] = {"grad_accum_dtype": "bf16"}
    # Two param groups (the norm without weight decay): each is partitioned on its own.
    norm = [model.norm.weight, model.norm.bias]
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in norm)]
    groups = [{"params": rest}, {"params": norm, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=0.05)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    torch.manual_seed(1 + torch.distributed.get_rank())
    for _ in range(2):
        ids = torch.randint(0, 13, (2, 4))
        loss = engine(ids).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(Path(out) / "ckpt"), tag="global_step2")
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        reference = get_fp32_state_dict_from_zero_checkpoint(str(Path(out) / "ckpt"))
        torch.save(reference, Path(out) / REFERENCE)
        states = Path(out) / "ckpt" / "global_step2"
        states /= (
            "zero_pp_rank_0_mp_rank_00_model_states.pt"
            if stage == 3
            else "mp_rank_00_model_states.pt"
        )
        torch.save(torch.load(states, weights_only=False)["module"], Path(out) / MODULE)
        (Path(out) / "fixture.json").write_text(json.dumps({"stage": stage}))
    torch.distributed.barrier()


if __name__ == "__main__":
    _train_and_save(int(sys.argv[1]), sys.argv[2])
