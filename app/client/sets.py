"""What ``graft submit`` uploads for a path: one file, or a checkpoint folder's files as one set.

A set's files are named as the server will store them: their own names for a Hugging Face
sharded set, a DCP folder (a Megatron-Core ``torch_dist`` one with its ``metadata.json``) or a
DeepSpeed tag folder, whose files' names differ; paths relative
to the iteration folder for a Megatron-LM checkpoint, whose rank files are all named
``model_optim_rng.pt`` (``mp_rank_00_000/model_optim_rng.pt``, ``mp_rank_01_000/…``).
"""

from __future__ import annotations

from pathlib import Path

from app.client.errors import GraftClientError

__all__ = ["upload_files"]

_ZERO_SUFFIXES = ("_model_states.pt", "_optim_states.pt")


def _megatron_files(path: Path) -> list[tuple[str, Path]] | None:
    """A Megatron-LM checkpoint folder's rank files, named relative to the iteration folder."""
    from app.engine.errors import UnreadableCheckpointError
    from app.engine.readers.megatron import MegatronFolder, megatron_folder

    try:
        found = megatron_folder(path)
    except UnreadableCheckpointError as exc:
        raise GraftClientError(f"{path}: {exc}") from None
    if found is None:
        return None
    return [(MegatronFolder.member(at), found.files[at]) for at in sorted(found.files)]


def _torch_dist_iteration(path: Path) -> Path:
    """A Megatron checkpoint folder whose tracker names a ``torch_dist`` iteration: that
    iteration's DCP folder; any other folder as it is."""
    from app.engine.errors import UnreadableCheckpointError
    from app.engine.readers.megatron import iteration_dir

    try:
        folder = iteration_dir(path)
    except UnreadableCheckpointError as exc:
        raise GraftClientError(f"{path}: {exc}") from None
    return folder if folder is not None and (folder / ".metadata").is_file() else path


def upload_files(path: Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of what uploading ``path`` sends: a file, or the files of a Hugging
    Face sharded set, a DCP checkpoint, a DeepSpeed checkpoint (its ``latest`` tag folder) or
    a Megatron-LM checkpoint (its latest iteration) in a folder.

    Raises:
        GraftClientError: a folder holding none of those.
    """
    if not path.is_dir():
        return [(path.name, path)]
    path = _torch_dist_iteration(path)
    if (path / ".metadata").is_file():  # torch.distributed.checkpoint: .metadata + .distcp
        return [  # (and Megatron-Core's torch_dist mark, metadata.json)
            (p.name, p)
            for p in sorted(path.iterdir())
            if p.name in (".metadata", "metadata.json") or p.suffix == ".distcp"
        ]
    megatron = _megatron_files(path)
    if megatron is not None:
        return megatron
    latest = path / "latest"  # DeepSpeed: the tag folder it names holds the rank files
    tag = latest.read_text(errors="replace").strip() if latest.is_file() else ""
    folder = path / tag if tag and "/" not in tag and (path / tag).is_dir() else path
    zero = sorted(p for p in folder.iterdir() if p.name.endswith(_ZERO_SUFFIXES))
    if any(p.name.endswith("_optim_states.pt") for p in zero):
        return [(p.name, p) for p in zero]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json"))
    )
    if not files:
        raise GraftClientError(f"{path}: no .safetensors, .bin or .index.json files to upload")
    return [(p.name, p) for p in files]
