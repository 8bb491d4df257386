"""Fused tensors: one source holding k sibling targets (q|k|v, gate|up), or the reverse.

A source key of shape ``S`` fits k sibling target keys (same parent module, same leaf, the
same shape ``T``) when ``S`` is ``T`` with exactly one dim k times larger. The part order is
the targets' file order, which is only trusted when the source's own name spells it
(``qkv`` = ``q`` + ``k`` + ``v``, ``gate_up`` = ``gate`` + ``up``): otherwise the match is
reported below the threshold and never applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.engine.align.evidence import Tensor, Unit, name_similarity, path_evidence
from app.engine.align.match import TIE, Candidate, Match, close

__all__ = ["match_fused"]

P_NAMED = 0.9  # the fused name spells its parts in order
P_NAME = 0.95
P_NUMBERS = 0.5
CAP_UNNAMED = 0.85  # part order taken on trust from file order: never enough to apply


def _parts(units: Sequence[Unit]) -> dict[tuple[str, str, tuple[int, ...]], list[Tensor]]:
    """Sibling tensors: (parent module, leaf, shape) -> tensors in file order."""
    groups: dict[tuple[str, str, tuple[int, ...]], list[Tensor]] = {}
    for unit in units:
        parent = unit.path.rsplit(".", 1)[0] if "." in unit.path else ""
        for leaf, tensor in unit.tensors.items():
            if leaf != "num_batches_tracked":
                groups.setdefault((parent, leaf, tensor.shape), []).append(tensor)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def _windows(
    siblings: list[Tensor], whole: tuple[int, ...], part: tuple[int, ...]
) -> list[list[Tensor]]:
    """Runs of consecutive siblings (file order) as many as ``whole`` holds ``part`` s."""
    if len(whole) != len(part) or not all(part):
        return []
    ratios = {a // b for a, b in zip(whole, part, strict=True) if a != b and a % b == 0}
    if len(ratios) != 1:
        return []
    (k,) = ratios
    return [siblings[i : i + k] for i in range(len(siblings) - k + 1)] if k >= 2 else []


def _spelled(whole: Tensor, siblings: list[Tensor]) -> list[list[Tensor]]:
    """The siblings whose names, in some order, spell the fused name (``qkv``: q, k, v),
    whatever the file order (a safetensors file lists keys sorted)."""
    word = _last_token(whole.key)
    by_token = {_last_token(t.key): t for t in siblings}
    out: list[Tensor] = []
    while word:
        step = next((tok for tok in sorted(by_token, key=len, reverse=True)
                     if tok and word.startswith(tok)), None)  # fmt: skip
        if step is None:
            return []
        out.append(by_token.pop(step))
        word = word[len(step) :]
    return [out] if len(out) >= 2 else []


def _fused_dim(whole: tuple[int, ...], part: tuple[int, ...], k: int) -> int | None:
    if len(whole) != len(part) or len(whole) > 2:  # only Linear weights and biases fuse
        return None
    dims = [d for d, (a, b) in enumerate(zip(whole, part, strict=True)) if a != b]
    if len(dims) == 1 and whole[dims[0]] == k * part[dims[0]]:
        return dims[0]
    return None


def _last_token(key: str) -> str:
    path = key.rsplit(".", 2)
    module = path[-2] if len(path) >= 2 else path[-1]
    tokens, _ = path_evidence(module)
    return "".join(tokens)


def _score(
    fused: Tensor, fused_unit: Unit, parts: list[Tensor], idf: Mapping[str, float]
) -> tuple[float, str]:
    parent = parts[0].key.rsplit(".", 2)[0]
    tokens, numbers = path_evidence(parent)
    name = name_similarity(fused_unit.tokens, tokens, idf)
    named = _last_token(fused.key) == "".join(_last_token(p.key) for p in parts)
    doubt = (1 - P_NAMED if named else 1.0) * (1 - P_NAME * name * name)
    same_layer = bool(numbers) and numbers == fused_unit.numbers[: len(numbers)]
    if same_layer:
        doubt *= 1 - P_NUMBERS
    belief = 1 - doubt
    if numbers and not same_layer:
        belief *= 0.3
    if not named:
        belief = min(belief, CAP_UNNAMED)
    why = (
        f"name {name:.2f}"
        + (" + layer" if same_layer else "")
        + (" + parts named" if named else " + part order unproven")
    )
    return belief, why + " + fused shape"


def match_fused(
    sources: Sequence[Unit],
    targets: Sequence[Unit],
    idf: Mapping[str, float],
    *,
    min_confidence: float,
) -> list[Match]:
    """Splits (one source -> k targets) and merges (k sources -> one target) among leftovers.

    Returns:
        One match per target key fed; ``applied`` only for the best fit per fused tensor that
        reaches ``min_confidence`` with no rival within the margin.
    """
    out: list[Match] = []
    out += _one_way(sources, targets, idf, min_confidence, split=True)
    out += _one_way(targets, sources, idf, min_confidence, split=False)
    return out


def _one_way(
    wholes: Sequence[Unit],
    pieces: Sequence[Unit],
    idf: Mapping[str, float],
    min_confidence: float,
    *,
    split: bool,
) -> list[Match]:
    groups = _parts(pieces)
    out: list[Match] = []
    for unit in wholes:
        for leaf, whole in unit.tensors.items():
            fits = []
            for (_, p_leaf, shape), siblings in groups.items():
                if p_leaf != leaf or whole.kernel:
                    continue
                seen: set[tuple[str, ...]] = set()
                for parts in _windows(siblings, whole.shape, shape) + _spelled(whole, siblings):
                    dim = _fused_dim(whole.shape, shape, len(parts))
                    names = tuple(p.key for p in parts)
                    if dim is not None and names not in seen:
                        seen.add(names)
                        belief, why = _score(whole, unit, parts, idf)
                        fits.append((belief, why, dim, parts))
            if not fits:
                continue
            fits.sort(key=lambda f: -f[0])
            belief, why, dim, parts = fits[0]
            rival = fits[1][0] if len(fits) > 1 else 0.0
            ambiguous = belief - rival < TIE
            applied = belief >= min_confidence and not close(belief, rival)
            names = tuple(p.key for p in parts)
            confidence = round(belief, 3)
            if split:
                for i, part in enumerate(parts):
                    op = f"split(dim={dim}, {i + 1}/{len(parts)})"
                    out.append(
                        Match(part.key, (whole.key,), confidence, why, (op,),
                              ambiguous=ambiguous, applied=applied,
                              candidates=[Candidate(whole.key, confidence)], group=names,
                              dim=dim)
                    )  # fmt: skip
            else:
                out.append(
                    Match(whole.key, names, confidence, why, (f"merge(dim={dim})",),
                          ambiguous=ambiguous, applied=applied,
                          candidates=[Candidate(n, confidence) for n in names], group=names,
                          dim=dim)
                )  # fmt: skip
    return out
