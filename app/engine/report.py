"""The report (``graft.report/v1``), its digest, the manifest, and the grouped text form.

The report is built once, from the plan, the execution and the model check, and is not edited
afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

from app.engine.keys import group_keys
from app.engine.plan import Plan, PlanEntry
from app.engine.recipe import Recipe, compile_patterns
from app.engine.target import Target

if TYPE_CHECKING:
    from app.engine.output.execution import Execution
    from app.engine.readers import Source
    from app.engine.verify import ModelCheck

__all__ = [
    "MANIFEST_SCHEMA",
    "REPORT_SCHEMA",
    "build_manifest",
    "build_report",
    "entries_digest",
    "group_report",
    "render_text",
    "report_entries",
]

REPORT_SCHEMA = "graft.report/v1"
MANIFEST_SCHEMA = "graft.manifest/v1"


def _entry_json(entry: PlanEntry, digest: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": entry.target,
        "status": entry.status,
        "sources": entry.sources,
        "rules": entry.rules,
        "ops": entry.ops,
        "shape": list(entry.shape),
        "source_shape": list(entry.source_shape) if entry.source_shape is not None else None,
        "dtype": entry.dtype,
        "digest": digest,
    }
    if entry.source_shapes is not None:
        out["source_shapes"] = [list(s) for s in entry.source_shapes]
    if entry.init is not None:
        out["init"] = {"fn": entry.init.fn, "args": entry.init.args, "seed": entry.init.seed}
    if entry.benign:
        out["benign"] = True
    return out


def entries_digest(entries: list[dict[str, Any]], unused: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the report's per-tensor parts (what the file carries)."""
    canonical = json.dumps(
        {"entries": entries, "unused": unused}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def report_entries(
    plan: Plan, digests: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's per-tensor parts: one entry per target key, one line per unused source key.

    Args:
        plan: the plan.
        digests: target key -> digest of what was written (empty for a dry run).

    Returns:
        ``(entries, unused)``, as the report holds them and :func:`entries_digest` hashes them.
    """
    entries = [_entry_json(e, digests.get(e.target)) for e in plan.entries]
    unused = [
        {"source": u.source, "reason": u.reason, "rule": u.rule}
        | ({"renamed": u.renamed} if u.renamed and u.renamed != u.source else {})
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
) -> dict[str, Any]:
    """Assemble the report of SPEC §3, once.

    Args:
        plan: the plan (entries, unused keys, suggestions, policy failures).
        source: the opened source.
        target: the target.
        execution: what writing produced; ``None`` for a dry run or a refusal.
        model: the forward-pass and equivalence checks of an architecture target, if run.
        source_sha256: the source's digest, when known.
        source_blake3: the source's BLAKE3 (``b3sum``), the identity when no sha256 is known.

    Returns:
        The ``graft.report/v1`` document.
    """
    entries, unused = report_entries(plan, execution.digests if execution else {})
    target_elements = sum(i.numel for i in target.tensors.values())
    warnings = list(plan.warnings) + (execution.warnings if execution else [])
    failures = list(plan.failures)
    verification: dict[str, Any] | str | None = None
    if execution is not None:
        verification = _verification(execution, failures)
    if model is not None and not isinstance(verification, str):
        verification = {**(verification or {}), **model.sections}
        failures += model.failures
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "ok": not failures,
        "source": {
            "sha256": source_sha256,
            **({"blake3": source_blake3} if source_blake3 and not source_sha256 else {}),
            "format": source.format,
            "entry": source.entry,
            "stripped_prefix": source.stripped_prefix,
            "tensors": len(source.tensors),
            "elements": sum(i.numel for i in source.tensors.values()),
        },
        "target": {
            "kind": target.kind,
            "name": target.name,
            "tensors": len(target.tensors),
            "elements": target_elements,
        },
        "summary": _summary(plan, target_elements),
        "entries": entries,
        "unused": unused,
        "suggestions": [
            {"source": s.source, "target": s.target, "confidence": s.confidence, "why": s.why}
            for s in plan.suggestions
        ],
        "rules": [r.as_json() for r in plan.rules],
        "warnings": warnings,
        "verification": verification,
    }
    if failures:
        report["errors"] = failures
    if execution is not None:
        report["output"] = {
            "format": execution.format,
            "files": execution.files,
            "copied": execution.copied,
            "materialised": execution.materialised,
            "copy_methods": execution.copy_methods,
            "report_sha256": entries_digest(entries, unused),
        }
    return report


def _summary(plan: Plan, target_elements: int) -> dict[str, Any]:
    """Counts by status and by reason, and how much of the target the source fed."""
    counts = {s: 0 for s in ("loaded", "adapted", "tied", "initialized", "kept", "missing")}
    for e in plan.entries:
        counts[e.status] += 1
    reasons = {
        r: sum(1 for u in plan.unused if u.reason == r)
        for r in ("dropped", "unexpected", "mismatched")
    }
    fed_elements = sum(math.prod(e.shape) for e in plan.entries if e.fed)
    summary: dict[str, Any] = {
        "loaded": counts["loaded"],
        "adapted": counts["adapted"],
        "tied": counts["tied"],
        "initialized": counts["initialized"],
        "kept": counts["kept"],
        "used": len({s for e in plan.entries if e.fed for s in e.sources}),
        **reasons,
        "coverage": {
            "tensors": round(
                (counts["loaded"] + counts["adapted"] + counts["tied"]) / max(len(plan.entries), 1),
                4,
            ),
            "elements": round(fed_elements / max(target_elements, 1), 6),
        },
    }
    if counts["missing"]:
        summary["missing"] = counts["missing"]
    return summary


def _verification(execution: Execution, failures: list[str]) -> dict[str, Any] | str:
    """The output check's part of ``verification``; a tensor that differs is a failure.
    ``skipped`` when the output was not re-read (``--no-verify``)."""
    check = execution.check
    if check is None:
        return "skipped"
    verification: dict[str, Any] = {
        "checked": check.checked if check else 0,
        "equal": check.equal if check else 0,
        "strict_load": check.strict_load if check else None,
    }
    if check and check.unequal:
        verification["unequal"] = check.unequal
        failures.append(f"verification: {len(check.unequal)} tensors differ from the source")
    if check and check.strict_error:
        verification["strict_error"] = check.strict_error
    if execution.rederived is not None and execution.rederived.how:
        verification["rederived"] = execution.rederived.section()
        if execution.rederived.unequal:
            failures += [f"verification: {u}" for u in execution.rederived.unequal]
    return verification


def build_manifest(plan: Plan, target: Target, recipe: Recipe) -> dict[str, Any]:
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
    return {"schema": MANIFEST_SCHEMA, "frozen": frozen, "bn_eval": bn_eval}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%".replace(".00%", "%")


def group_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report's keys grouped for humans, as data: what the text form and the web app show.

    Target entries are bucketed by status, then by the rules and ops that fired, then
    collapsed as ``layer1.{0..2}.conv{1,2}.weight``; unused source keys by reason and rule.

    Args:
        report: a ``graft.report/v1`` document.

    Returns:
        ``{"entries": [{"status", "pattern", "sources", "how", "keys"}],
        "unused": [{"reason", "rule", "pattern", "keys"}]}``, in the text form's order.
    """
    entries: list[dict[str, Any]] = []
    for status in _TARGET_STATUSES:
        buckets: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for e in report["entries"]:
            if e["status"] == status:
                buckets.setdefault((*e["rules"], *e["ops"]), []).append(e)
        for how, group in buckets.items():
            by_target = {e["target"]: e for e in group}
            for g in group_keys(list(by_target)):
                sources = [s for k in g.keys for s in by_target[k]["sources"]]
                origin = [p.pattern for p in group_keys(sources)] if sources != list(g.keys) else []
                entries.append(
                    {"status": status, "pattern": g.pattern, "sources": origin,
                     "how": list(how), "keys": list(g.keys)}
                )  # fmt: skip
    unused: list[dict[str, Any]] = []
    buckets_u: dict[tuple[str, str], list[str]] = {}
    for u in report["unused"]:
        buckets_u.setdefault((u["reason"], u["rule"] or ""), []).append(u["source"])
    for (reason, rule), keys in buckets_u.items():
        unused += [
            {"reason": reason, "rule": rule or None, "pattern": g.pattern, "keys": list(g.keys)}
            for g in group_keys(keys)
        ]
    return {"entries": entries, "unused": unused}


_TARGET_STATUSES = ("loaded", "adapted", "tied", "initialized", "kept", "missing")


def _target_line(target: dict[str, Any]) -> str:
    # A skeleton's name is "skeleton": say the kind once, and the name only when it adds one.
    name = target.get("name") or ""
    label = target["kind"] if name in ("", target["kind"]) else f"{target['kind']} {name}"
    return f"target  {label}, {target['tensors']} tensors"


def render_text(report: dict[str, Any]) -> str:
    """The grouped human form: keys collapsed as ``layer1.{0..2}.conv{1,2}.weight``.

    Returns:
        The text, ending with a newline.
    """
    s, src = report["summary"], report["source"]
    lines = [
        f"graft report: {'OK' if report['ok'] else 'FAILED'}",
        f"source  {src['format']}, entry {src['entry'] or '(root)'}, "
        f"stripped {src['stripped_prefix'] or '-'}, {src['tensors']} tensors"
        + (f", sha256 {src['sha256'][:12]}…" if src.get("sha256") else "")
        + (f", blake3 {src['blake3'][:12]}…" if src.get("blake3") else ""),
        _target_line(report["target"]),
        f"target keys  loaded {s['loaded']} · adapted {s['adapted']} · tied {s.get('tied', 0)} · "
        "initialized "
        f"{s['initialized']} · kept {s['kept']}"
        + (f" · MISSING {s['missing']}" if s.get("missing") else ""),
        f"source keys  used {s['used']} · dropped {s['dropped']} · unexpected {s['unexpected']} "
        f"· mismatched {s['mismatched']}",
        f"coverage     {_pct(s['coverage']['tensors'])} of tensors, "
        f"{_pct(s['coverage']['elements'])} of elements",
    ]
    groups = group_report(report)
    for status in _TARGET_STATUSES:
        members = [e for e in report["entries"] if e["status"] == status]
        if not members:
            continue
        lines += ["", f"{status} ({len(members)})"]
        for g in groups["entries"]:
            if g["status"] == status:
                origin = "  <- " + ", ".join(g["sources"]) if g["sources"] else ""
                detail = f"  [{', '.join(g['how'])}]" if g["how"] else ""
                lines.append(f"  {g['pattern']}{origin}{detail}")
    if report["unused"]:
        lines += ["", f"unused source keys ({len(report['unused'])})"]
        lines += [
            f"  {u['reason']:<10} {u['pattern']}" + (f"  [{u['rule']}]" if u["rule"] else "")
            for u in groups["unused"]
        ]
    unmatched = [r for r in report.get("rules", []) if not r["matched"]]
    if report.get("rules"):
        lines += ["", f"rules ({len(report['rules'])}, {len(unmatched)} matched nothing)"]
        lines += [
            f"  {r['rule']:<12} {r['matched']:>6}  {r['pattern']}"
            + ("  <- MATCHED NOTHING" if not r["matched"] else "")
            for r in report["rules"]
        ]
    if report["suggestions"]:
        lines += ["", "suggestions (align)"]
        lines += [
            f"  {x['source']} -> {x['target']}  ({x['confidence']:.2f}, {x['why']})"
            for x in report["suggestions"]
        ]
    if report["warnings"]:
        lines += ["", "warnings"] + [f"  ! {w}" for w in report["warnings"]]
    if report.get("errors"):
        lines += ["", "errors"] + [f"  x {e}" for e in report["errors"]]
    v = report.get("verification")
    if v == "skipped":
        lines += ["", "verification  skipped (--no-verify)"]
    elif v:
        strict = {True: "strict load ok", False: "STRICT LOAD FAILED", None: "strict load not run"}
        lines += [
            "",
            f"verification  {v['equal']}/{v['checked']} equal to the source, "
            + strict[v["strict_load"]],
        ]
        lines += _model_checks(v)
    return "\n".join(lines) + "\n"


def _model_checks(v: dict[str, Any]) -> list[str]:
    """The forward-pass and equivalence lines of an architecture target's verification."""
    lines: list[str] = []
    forward = v.get("forward")
    if forward:
        if forward.get("ok") is None:
            how = f"skipped ({forward.get('skipped')})"
        elif forward.get("error"):
            how = f"FAILED: {forward['error']}"
        else:
            how = (
                f"{'ok' if forward['ok'] else 'FAILED'}: input {forward['input_shape']} -> "
                f"{forward['output_shape']} (declared {forward['expected_shape']}), "
                f"{'finite' if forward['finite'] else 'NaN/Inf'}"
            )
        lines.append(f"forward pass  {forward['architecture']} on {forward['device']}: {how}")
    eq = v.get("equivalence")
    if eq:
        if not eq["run"]:
            how = f"not run: {eq['reason']}"
        elif eq.get("error"):
            how = f"FAILED: {eq['error']}"
        else:
            how = f"{'allclose' if eq['ok'] else 'DIFFERENT'} (max |diff| {eq['max_abs_diff']})"
        lines.append(f"equivalence   with source {eq['source_architecture']}: {how}")
    parity = v.get("parity")
    if parity:
        first = parity["first_divergence"]
        how = (
            f"equal: {parity['modules_compared']} modules compared"
            if first is None
            else f"DIVERGES at {first['target_module'] or '(model)'} "
            f"(source {first['source_module'] or '(model)'}, "
            f"max |diff| {first['max_abs_diff']:.3g})"
        )
        skipped = f", {len(parity['skipped'])} skipped" if parity["skipped"] else ""
        lines.append(f"parity        with {parity['reference']}: {how}{skipped}")
    rederived = v.get("rederived")
    if rederived:
        how = ", ".join(f"{n} by {k}" for k, n in rederived["how"].items())
        lines.append(f"re-derived    {rederived['checked']} from the source ({how})")
    return lines
