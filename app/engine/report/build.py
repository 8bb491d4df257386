"""Build the report (``graft.report/v1``) and the manifest, once, and the entries' digest.

The report is built from the plan, the execution and the model check, as a frozen
:class:`~app.engine.report.models.Report`, and is not edited afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from app.engine.plan import Plan, PlanEntry
from app.engine.plan.hints import Hint as PlanHint
from app.engine.readers.several import SeveralSources
from app.engine.recipe import Recipe, compile_patterns
from app.engine.report.models import (
    AlignSuggestion,
    Coverage,
    Entry,
    Hint,
    InitRecordJson,
    Manifest,
    OutputSummary,
    Report,
    ReportSource,
    ReportTarget,
    RuleCount,
    SourceFormat,
    Summary,
    UnusedKey,
    Verification,
)
from app.engine.target import Target

if TYPE_CHECKING:
    from app.engine.output.execution import Execution
    from app.engine.readers import Source
    from app.engine.verify import ModelCheck

__all__ = ["build_manifest", "build_report", "entries_digest", "report_entries"]


def _entry(entry: PlanEntry, digest: str | None) -> Entry:
    init = entry.init
    return Entry(
        target=entry.target,
        status=entry.status,
        sources=entry.sources,
        rules=entry.rules,
        ops=entry.ops,
        shape=list(entry.shape),
        source_shape=list(entry.source_shape) if entry.source_shape is not None else None,
        dtype=entry.dtype,
        digest=digest,
        source_shapes=(
            [list(s) for s in entry.source_shapes] if entry.source_shapes is not None else None
        ),
        init=InitRecordJson(fn=init.fn, args=init.args, seed=init.seed) if init else None,
        benign=True if entry.benign else None,
        stored_as=entry.stored_as,
        hint=_hint(entry.hint),
    )


def _hint(hint: PlanHint | None) -> Hint | None:
    if hint is None:
        return None
    return Hint(candidate=hint.candidate, confidence=hint.confidence, paste=hint.paste)


def entries_digest(
    entries: Sequence[Mapping[str, Any] | Entry], unused: Sequence[Mapping[str, Any] | UnusedKey]
) -> str:
    """sha256 of the canonical JSON of the report's per-tensor parts (what the file carries).

    Args:
        entries: the report's ``entries``, typed or as its document holds them.
        unused: the report's ``unused``, likewise.
    """

    def doc(part: Mapping[str, Any] | Entry | UnusedKey) -> Any:
        return part.model_dump() if isinstance(part, Entry | UnusedKey) else part

    canonical = json.dumps(
        {"entries": [doc(e) for e in entries], "unused": [doc(u) for u in unused]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def report_entries(plan: Plan, digests: dict[str, str]) -> tuple[list[Entry], list[UnusedKey]]:
    """The report's per-tensor parts: one entry per target key, one line per unused source key.

    Args:
        plan: the plan.
        digests: target key -> digest of what was written (empty for a dry run).

    Returns:
        ``(entries, unused)``, as the report holds them and :func:`entries_digest` hashes them.
    """
    entries = [_entry(e, digests.get(e.stored_as or e.target)) for e in plan.entries]
    unused = [
        UnusedKey(
            source=u.source,
            reason=u.reason,
            rule=u.rule,
            renamed=u.renamed if u.renamed and u.renamed != u.source else None,
            hint=_hint(u.hint),
        )
        for u in plan.unused
    ]
    return entries, unused


def build_report(
    plan: Plan,
    source: Source,
    target: Target,
    *,
    execution: Execution | None = None,
    model: ModelCheck | None = None,
    source_sha256: str | None,
    source_blake3: str | None = None,
) -> Report:
    """Assemble the report of SPEC §3, once.

    Args:
        plan: the plan (entries, unused keys, suggestions, policy failures).
        source: the opened source.
        target: the target.
        execution: what writing produced; ``None`` for a dry run or a refusal.
        model: the forward-pass and equivalence checks of an architecture target, if run
            (only after writing: without ``execution`` it is not looked at).
        source_sha256: the source's digest, when known.
        source_blake3: the source's BLAKE3 (``b3sum``), the identity when no sha256 is known.

    Returns:
        The ``graft.report/v1`` report.
    """
    entries, unused = report_entries(plan, execution.digests if execution else {})
    target_elements = sum(i.numel for i in target.tensors.values())
    failures = list(plan.failures)
    verification: Verification | Literal["skipped"] | None = None
    if execution is not None:
        verification = _verification(execution, model, failures)
    return Report(
        ok=not failures,
        source=_source(source, source_sha256, source_blake3),
        target=ReportTarget(
            kind=target.kind,
            name=target.name,
            tensors=len(target.tensors),
            elements=target_elements,
        ),
        summary=_summary(plan, target_elements),
        entries=entries,
        unused=unused,
        suggestions=[AlignSuggestion.model_validate(s.as_json()) for s in plan.suggestions],
        rules=[
            RuleCount(rule=r.rule, matched=r.matched, applied=r.applied, pattern=r.pattern)
            for r in plan.rules
        ],
        warnings=[*plan.warnings, *(execution.warnings if execution else [])],
        verification=verification,
        errors=failures or None,
        output=_output(execution, entries, unused) if execution is not None else None,
    )


def _source(
    source: Source, sha256: str | None, blake3: str | None
) -> ReportSource | list[ReportSource]:
    """One source as it is; several as a list, each part with its name and own digest
    (computed when the listing's was)."""
    if isinstance(source, SeveralSources):
        return [
            _one_source(
                part,
                part.sha256() if sha256 else None,  # cached: the listing's digest took it
                part.blake3() if blake3 and not sha256 else None,
                name,
            )
            for name, part in source.parts.items()
        ]
    return _one_source(source, sha256, blake3)


def _one_source(
    source: Source, sha256: str | None, blake3: str | None, name: str | None = None
) -> ReportSource:
    return ReportSource(
        name=name,
        sha256=sha256,
        blake3=blake3 if blake3 and not sha256 else None,
        format=cast(SourceFormat, source.format),
        entry=source.entry,
        stripped_prefix=source.stripped_prefix,
        tensors=len(source.tensors),
        elements=sum(i.numel for i in source.tensors.values()),
    )


def _output(execution: Execution, entries: list[Entry], unused: list[UnusedKey]) -> OutputSummary:
    return OutputSummary(
        format=execution.format,
        files=execution.files,
        copied=execution.copied,
        materialised=execution.materialised,
        copy_methods=execution.copy_methods,
        report_sha256=entries_digest(entries, unused),
    )


def _summary(plan: Plan, target_elements: int) -> Summary:
    """Counts by status and by reason, and how much of the target the source fed."""
    counts = {s: 0 for s in ("loaded", "adapted", "tied", "initialized", "kept", "missing")}
    for e in plan.entries:
        counts[e.status] += 1
    reasons = {
        r: sum(1 for u in plan.unused if u.reason == r)
        for r in ("dropped", "unexpected", "mismatched")
    }
    fed_elements = sum(math.prod(e.shape) for e in plan.entries if e.fed)
    fed_tensors = counts["loaded"] + counts["adapted"] + counts["tied"]
    return Summary(
        loaded=counts["loaded"],
        adapted=counts["adapted"],
        tied=counts["tied"],
        initialized=counts["initialized"],
        kept=counts["kept"],
        used=len({s for e in plan.entries if e.fed for s in e.sources}),
        dropped=reasons["dropped"],
        unexpected=reasons["unexpected"],
        mismatched=reasons["mismatched"],
        coverage=Coverage(
            tensors=round(fed_tensors / max(len(plan.entries), 1), 4),
            elements=round(fed_elements / max(target_elements, 1), 6),
        ),
        missing=counts["missing"] or None,
    )


def _verification(
    execution: Execution, model: ModelCheck | None, failures: list[str]
) -> Verification | Literal["skipped"]:
    """The output check's part of ``verification``, then the model checks; a tensor that
    differs is a failure. ``skipped`` when the output was not re-read (``--no-verify``)."""
    check = execution.check
    if check is None:
        return "skipped"
    if check.unequal:
        failures.append(f"verification: {len(check.unequal)} tensors differ from the source")
    sections = model.sections if model is not None else {}
    if model is not None:
        failures += model.failures
    rederived = execution.rederived
    if rederived is not None and rederived.unequal:
        failures += [f"verification: {u}" for u in rederived.unequal]
    return Verification(
        checked=check.checked,
        equal=check.equal,
        strict_load=check.strict_load,
        unequal=check.unequal or None,
        strict_error=check.strict_error or None,
        forward=sections.get("forward"),
        equivalence=sections.get("equivalence"),
        parity=sections.get("parity"),
        rederived=rederived.section() if rederived is not None and rederived.how else None,
    )


def build_manifest(plan: Plan, target: Target, recipe: Recipe) -> Manifest:
    """What the receiving side must do besides loading: frozen keys, BatchNorm in eval mode."""
    patterns = compile_patterns(recipe.freeze, section="freeze")
    frozen = [e.target for e in plan.entries if any(p.matches(e.target) for p in patterns)]
    bn_eval: list[str] = []
    if recipe.freeze_bn:
        bn_eval = target.batchnorm_modules()
        prefixes = tuple(f"{m}." if m else "" for m in bn_eval)
        frozen += [
            k
            for k, info in target.tensors.items()
            if info.kind == "parameter" and k.startswith(prefixes) and k not in frozen
        ]
    return Manifest(frozen=frozen, bn_eval=bn_eval)
