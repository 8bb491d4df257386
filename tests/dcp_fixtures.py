"""DCP checkpoints written by torch itself: gloo on CPU, several real processes.

Run as a script under ``torch.distributed.run`` (what :func:`save_distributed` does), each rank
builds the same seeded model, shards it, and saves with ``torch.distributed.checkpoint.save``:

- ``fsdp2``: ``fully_shard`` on every Linear and the root, one AdamW step, then
  ``get_state_dict`` saved as ``{"model": ..., "optimizer": ...}`` (how trainers save);
- ``dtensor``: flat keys (as torchtitan writes them), each a DTensor on a 2-D mesh with
  ``Shard(0)``/``Shard(1)`` placements, so chunks split both dims, and a bfloat16 one.

The reference is torch's own merge, ``dcp_to_torch_save``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["dcp_reference", "save_distributed", "sequential_model"]


def sequential_model() -> torch.nn.Module:
    """The small model every fixture shards: odd sizes, so chunks are uneven."""
    return torch.nn.Sequential(
        torch.nn.Linear(7, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3)
    )


def save_distributed(path: Path, kind: str, world_size: int) -> None:
    """Save a ``kind`` checkpoint to ``path`` from ``world_size`` real gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={world_size}", __file__, kind, str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"torch.distributed.run failed:\n{done.stderr[-3000:]}")


def dcp_reference(path: Path, out: Path) -> dict[str, Any]:
    """torch's own merged state dict of a DCP folder."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, out)
    loaded: dict[str, Any] = torch.load(out, weights_only=False)
    return loaded


def _fsdp2(path: str) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    model = sequential_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 7)).sum().backward()
    optimizer.step()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    torch.distributed.checkpoint.save(
        {"model": model_sd, "optimizer": optim_sd}, checkpoint_id=path
    )


def _dtensor(path: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    world = torch.distributed.get_world_size()
    mesh = init_device_mesh("cpu", (2, world // 2) if world % 2 == 0 else (world, 1))
    values = {
        "tok_embeddings.weight": (torch.randn(11, 6), [Shard(0), Shard(1)]),
        "layers.0.attention.wq.weight": (torch.randn(6, 6), [Shard(1), Shard(0)]),
        "layers.0.feed_forward.w1.weight": (torch.randn(9, 6).bfloat16(), [Shard(0), Replicate()]),
        "norm.weight": (torch.randn(6), [Replicate(), Replicate()]),
        "output.bias": (torch.arange(5, dtype=torch.int64), [Shard(0), Shard(0)]),
    }
    state = {k: distribute_tensor(v, mesh, p) for k, (v, p) in values.items()}
    torch.distributed.checkpoint.save(state, checkpoint_id=path)


def _main(kind: str, path: str) -> None:
    torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    try:
        {"fsdp2": _fsdp2, "dtensor": _dtensor}[kind](path)
        torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    import torch.distributed.checkpoint  # the submodule save() lives in

    _main(sys.argv[1], sys.argv[2])
