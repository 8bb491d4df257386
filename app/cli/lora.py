"""``graft lora merge|unmerge``: a PEFT LoRA adapter into its base weights, and back out.

What PEFT's ``merge_and_unload().save_pretrained(out)`` gives, without loading the model:
``OUT`` is a safetensors file, or a folder that gets ``model.safetensors`` plus the base
folder's config and tokenizer files, so ``from_pretrained(OUT)`` loads it as it loaded the base.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

from app.cli.help_format import GraftCommand, GraftGroup
from app.cli.options import JsonOpt

__all__ = ["lora_cli"]

lora_cli = typer.Typer(
    cls=GraftGroup,
    help="Merge a PEFT LoRA adapter into its base weights, or take it back out.",
    no_args_is_help=True,
)

# Files beside a transformers model's weights that a merged model needs unchanged.
_BESIDE_WEIGHTS = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer.model",
)  # fmt: skip

AdapterArg = Annotated[
    Path,
    typer.Argument(help="PEFT's adapter folder: adapter_config.json + adapter_model.safetensors."),
]
OutputOpt = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="A .safetensors file, or a folder (it gets model.safetensors and the base "
        "folder's config and tokenizer files).",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--max-shard-size",
        help="Write Hugging Face shards of at most this size (e.g. 5GB) into the folder -o "
        "(replacing it).",
    ),
]
AlphaOpt = Annotated[
    float | None,
    typer.Option("--alpha", help="Use this lora_alpha instead of adapter_config.json's."),
]


@lora_cli.command(cls=GraftCommand)
def merge(
    base: Annotated[
        Path, typer.Argument(help="The base model: a safetensors file, model folder or shards.")
    ],
    adapter: AdapterArg,
    output: OutputOpt,
    alpha: AlphaOpt = None,
    max_shard_size: ShardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write BASE with ADAPTER merged in: W + (alpha/r)·B·A per target module."""
    _run(base, adapter, output, _Options("merge", alpha, max_shard_size, as_json))


@lora_cli.command(cls=GraftCommand)
def unmerge(
    merged: Annotated[Path, typer.Argument(help="The merged model (as `lora merge` wrote it).")],
    adapter: AdapterArg,
    output: OutputOpt,
    alpha: AlphaOpt = None,
    max_shard_size: ShardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write MERGED with ADAPTER taken out: W - (alpha/r)·B·A (float32: within one ulp)."""
    _run(merged, adapter, output, _Options("unmerge", alpha, max_shard_size, as_json))


@dataclass(frozen=True)
class _Options:
    mode: Literal["merge", "unmerge"]
    alpha: float | None
    max_shard_size: str | None
    as_json: bool


def _run(base: Path, adapter: Path, output: Path, options: _Options) -> None:
    from app.cli.sizes import parse_size
    from app.engine.lora import apply_lora, read_adapter

    mode, shards = options.mode, options.max_shard_size
    folder = shards is not None or output.is_dir() or output.suffix != ".safetensors"
    target = output / "model.safetensors" if folder and shards is None else output
    if folder and shards is None:
        output.mkdir(parents=True, exist_ok=True)
    result = apply_lora(
        base,
        read_adapter(adapter, alpha=options.alpha),
        target,
        mode=mode,
        max_shard_size=parse_size(shards) if shards is not None else None,
    )
    copied = _copy_beside(base, output) if folder else []
    if options.as_json:
        typer.echo(json.dumps({**result.as_json(), "files_copied": copied}, indent=2))
        return
    verb = "merged" if mode == "merge" else "unmerged"
    typer.echo(f"{verb} {len(result.modules)} modules into {target}")
    for m in result.modules:
        typer.echo(f"  {m.base_key}  {m.kind}  r={m.rank} alpha={m.alpha:g} scale={m.scale:g}")
    for key in result.replaced:
        typer.echo(f"  {key}  replaced (modules_to_save)")
    typer.echo(f"  {result.copied} tensors unchanged")
    if copied:
        typer.echo(f"  copied from the base: {', '.join(copied)}")


def _copy_beside(base: Path, output: Path) -> list[str]:
    """Copy the base folder's config and tokenizer files into the output folder."""
    if not base.is_dir() or base.resolve() == output.resolve():
        return []
    copied = []
    for name in _BESIDE_WEIGHTS:
        if (base / name).is_file():
            shutil.copyfile(base / name, output / name)
            copied.append(name)
    return copied
