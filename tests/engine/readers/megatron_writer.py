"""Write a real Megatron-LM checkpoint for the tests: run by Megatron-Core's own venv's python.

``python megatron_writer.py OUT [KIND]`` (``make megatron-venv``: Megatron-Core 0.19.2 on
Python 3.12; cached by ``tests/megatron_fixtures.py``) writes, with Megatron's own code and no
GPU, one of two tiny ``GPTModel``s:

- ``gpt`` (the default): 4 layers, GQA (32 heads in 8 query groups of head dim 128), SwiGLU,
  RMSNorm, RoPE, no biases, untied output layer, vocab 100 padded;
- ``gpt2``: GPT-2's layout with GPT-2 small's attention (12 heads of 64, hidden 768), 2
  layers, learned absolute position embeddings, LayerNorm, GELU, biases everywhere, the output
  layer tied to the word embeddings, vocab 100 padded.

Into:

- ``OUT/legacy``: the model saved with tensor parallel 2 x pipeline parallel 2 (4 processes on
  gloo, CPU) by ``megatron.training.checkpointing.save_checkpoint`` in the legacy ``torch``
  format: ``latest_checkpointed_iteration.txt`` and
  ``iter_0000007/mp_rank_TT_PPP/model_optim_rng.pt``, each holding Megatron's ``args``
  namespace, the rank's model shard and its RNG state.
- ``OUT/dist``: the same 4 shards saved by ``megatron.core.dist_checkpointing.save`` (the
  ``torch_dist`` backend).
- ``OUT/training``: the same again, saved by ``save_checkpoint`` with ``--ckpt-format
  torch_dist`` as a training run saves it: ``latest_checkpointed_iteration.txt`` and
  ``iter_0000007/`` holding the DCP files, ``metadata.json`` and ``common.pt`` (the args).
- ``OUT/tp1``: the unsplit model below, saved by ``save_checkpoint`` with TP 1 x PP 1 in the
  legacy format: one rank file, ``iter_0000007/mp_rank_00/model_optim_rng.pt``.
- ``OUT/reference.pt``: the reference. One process builds the same model unsplit (TP 1, PP 1)
  and loads ``OUT/dist`` into it with ``dist_checkpointing.load``: Megatron itself gathers the
  shards (its own resharding, SwiGLU's interleaved ``linear_fc1`` included). Saved as a plain
  ``{"state_dict", "tokens", "logits", "vocab_size"}``: the logits are the unsplit Megatron
  model's on fixed tokens.

The pieces of Megatron's save path that need a GPU are answered on the CPU: the CUDA RNG state
it stores next to the CPU ones is the CPU RNG state's bytes (it lands in
``rng_state[0]["cuda_rng_state"]`` and nowhere else), and the tied output layer's copy of the
word embeddings is all-reduced on gloo where Megatron would move it to the GPU first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ITERATION = 7
TP, PP = 2, 2
VOCAB = 100
SEED = 1234


# Each kind's model, as Megatron's command line gives it.
MODELS = {
    "gpt": [
        *("--num-layers", "4", "--hidden-size", "64", "--ffn-hidden-size", "96"),
        *("--num-attention-heads", "32", "--group-query-attention", "--num-query-groups", "8"),
        *("--kv-channels", "128", "--swiglu", "--normalization", "RMSNorm"),
        *("--disable-bias-linear", "--untie-embeddings-and-output-weights"),
        *("--position-embedding-type", "rope", "--no-rope-fusion"),
    ],
    "gpt2": [
        *("--num-layers", "2", "--hidden-size", "768", "--ffn-hidden-size", "256"),
        *("--num-attention-heads", "12", "--normalization", "LayerNorm"),
        *("--position-embedding-type", "learned_absolute"),
        *("--no-bias-gelu-fusion", "--no-bias-dropout-fusion"),
    ],
}


def _argv(out: Path, kind: str, tp: int, pp: int) -> list[str]:
    return [
        "megatron",
        *MODELS[kind],
        *("--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "1"),
        *("--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB)),
        *("--make-vocab-size-divisible-by", "16", "--seed", str(SEED)),
        *("--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)),
        *("--distributed-backend", "gloo", "--use-cpu-initialization", "--no-save-optim"),
        *("--transformer-impl", "local", "--ckpt-format", "torch"),
        *("--save", str(out / "legacy"), "--no-gradient-accumulation-fusion"),
        *("--no-masked-softmax-fusion", "--no-bias-swiglu-fusion", "--no-persist-layer-norm"),
        *("--exit-signal-handler", "--save-interval", "1", "--train-iters", "1"),
    ]


def _init(out: Path, kind: str, tp: int, pp: int) -> Any:
    import megatron.training.arguments as arguments
    import torch
    from megatron.training.arguments import parse_args, validate_args

    # No GPU here. The CUDA RNG state Megatron stores beside the CPU ones is the CPU one, and
    # the GPU generation validate_args asks about is a pre-Blackwell one (it then wants
    # CUDA_DEVICE_MAX_CONNECTIONS=1, set in _env).
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    # A tied output layer on the last pipeline stage starts as a copy of the word embeddings,
    # all-reduced over the embedding group after ``.cuda()``: on gloo, it stays on the CPU.
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    arguments.get_device_arch_version = lambda: 9
    # dist_checkpointing waits on CUDA streams and all-reduces its status flags on the
    # current CUDA device: there are no streams, and the flags live on the CPU (gloo).
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    sys.argv = _argv(out, kind, tp, pp)
    from megatron.core import parallel_state as mpu
    from megatron.training.global_vars import set_global_variables
    from megatron.training.initialize import _set_random_seed, initialize_megatron

    args = parse_args()
    validate_args(args)
    set_global_variables(args)
    # initialize_megatron sets up the model-parallel groups only when it sees GPUs: with none,
    # the same calls it makes, on gloo.
    initialize_megatron(allow_no_cuda=True, skip_mpu_initialization=True)
    torch.distributed.init_process_group("gloo", rank=args.rank, world_size=args.world_size)
    mpu.initialize_model_parallel(tp, pp)
    _set_random_seed(args.seed)
    return args


def _model(args: Any) -> Any:
    from megatron.core import parallel_state as mpu
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.training.argument_utils import core_transformer_config_from_args

    config = core_transformer_config_from_args(args)
    spec = get_gpt_layer_local_spec(normalization=args.normalization)
    return GPTModel(
        config,
        spec,
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=mpu.is_pipeline_first_stage(),
        post_process=mpu.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
    )


def _rank(out: Path, kind: str) -> None:
    import torch
    from megatron.core import dist_checkpointing
    from megatron.training.checkpointing import save_checkpoint

    args = _init(out, kind, TP, PP)
    model = _model(args)
    save_checkpoint(ITERATION, [model], None, None, 0)
    (out / "dist").mkdir(exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), str(out / "dist"))
    torch.distributed.barrier()
    # The same model as a training run saves it with --ckpt-format torch_dist: the tracker
    # file, and iter_0000007/ holding the DCP files, metadata.json and common.pt (the args).
    args.ckpt_format, args.use_dist_ckpt, args.save = "torch_dist", True, str(out / "training")
    save_checkpoint(ITERATION, [model], None, None, 0)
    torch.distributed.barrier()


def _reference(out: Path, kind: str) -> None:
    import torch
    from megatron.core import dist_checkpointing

    args = _init(out / "unused", kind, 1, 1)
    model = _model(args)
    loaded = dist_checkpointing.load(model.sharded_state_dict(), str(out / "dist"))
    model.load_state_dict(loaded)
    model.eval()
    # Inference: Megatron's inference RNG tracker, which forks no CUDA RNG for dropout.
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).unsqueeze(0).expand(2, -1)
    mask = torch.triu(torch.ones(1, 1, 16, 16, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        logits = model(tokens, positions, mask)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    # The unsplit model saved as a TP 1 x PP 1 run saves it: one rank file, mp_rank_00/.
    from megatron.training.checkpointing import save_checkpoint

    args.save = str(out / "tp1")
    save_checkpoint(ITERATION, [model], None, None, 0)
    torch.save(
        {"state_dict": state, "tokens": tokens, "logits": logits, "vocab_size": VOCAB},
        out / "reference.pt",
    )


def _env(rank: int, world: int, port: str) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, CUDA_VISIBLE_DEVICES="")
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_DEVICE_MAX_CONNECTIONS="1")
    return env


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main() -> None:
    out = Path(sys.argv[1])
    kind = sys.argv[2] if len(sys.argv) > 2 else "gpt"
    role = sys.argv[3] if len(sys.argv) > 3 else "all"
    if kind not in MODELS:
        sys.exit(f"unknown kind {kind!r}: one of {', '.join(MODELS)}")
    if role == "rank":
        _rank(out, kind)
        return
    if role == "reference":
        _reference(out, kind)
        return
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    me = [sys.executable, __file__, str(out), kind]
    ranks = [subprocess.Popen([*me, "rank"], env=_env(r, TP * PP, port)) for r in range(TP * PP)]
    if any(p.wait(timeout=600) for p in ranks):
        sys.exit("a rank failed")
    subprocess.run([*me, "reference"], env=_env(0, 1, _free_port()), check=True, timeout=600)


if __name__ == "__main__":
    main()
