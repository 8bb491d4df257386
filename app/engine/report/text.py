"""The report for humans: its keys grouped (:func:`group_report`) and the text form
(:func:`render_text`), both read from a ``graft.report/v1`` document."""

from __future__ import annotations

from typing import Any

from app.engine.keys import group_keys

__all__ = ["group_report", "render_text"]


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


def _source_line(src: dict[str, Any]) -> str:
    # Several sources: one line each, named as their keys are (`NAME:KEY`).
    label = f"source {src['name']}:" if src.get("name") else "source "
    return (
        f"{label} {src['format']}, entry {src['entry'] or '(root)'}, "
        f"stripped {src['stripped_prefix'] or '-'}, {src['tensors']} tensors"
        + (f", sha256 {src['sha256'][:12]}…" if src.get("sha256") else "")
        + (f", blake3 {src['blake3'][:12]}…" if src.get("blake3") else "")
    )


def render_text(report: dict[str, Any]) -> str:
    """The grouped human form: keys collapsed as ``layer1.{0..2}.conv{1,2}.weight``.

    Returns:
        The text, ending with a newline.
    """
    s, src = report["summary"], report["source"]
    lines = [
        f"graft report: {'OK' if report['ok'] else 'FAILED'}",
        *[_source_line(part) for part in (src if isinstance(src, list) else [src])],
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
    lines += _hints(report)
    if report.get("rules"):
        lines += _rules(report)
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
    return lines + _proof_lines(v)


def _proof_lines(v: dict[str, Any]) -> list[str]:
    """The parity line (SPEC §3.2) and the re-derivation line of ``verification``."""
    lines: list[str] = []
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


def _rules(report: dict[str, Any]) -> list[str]:
    """The rules section: each rule's matched and applied counts, flagging the idle ones."""
    rules = report["rules"]
    unmatched = sum(1 for r in rules if not r["matched"])
    # The rules a warning says matched but changed nothing (``unapplied: adapt[0] (...) ...``).
    idle = {
        w.partition(": ")[2].partition(" ")[0]
        for w in report["warnings"]
        if w.startswith("unapplied: ")
    }
    lines = [
        "",
        f"rules ({len(rules)}, {unmatched} matched nothing, {len(idle)} changed nothing)",
        f"  {'rule':<12} {'matched':>7} {'applied':>7}  pattern",
    ]
    for r in rules:
        flag = "  <- MATCHED NOTHING" if not r["matched"] else ""
        flag = flag or ("  <- CHANGED NOTHING" if r["rule"] in idle else "")
        lines.append(
            f"  {r['rule']:<12} {r['matched']:>7} {r.get('applied', '-'):>7}  {r['pattern']}{flag}"
        )
    return lines


def _hints(report: dict[str, Any]) -> list[str]:
    """Each leftover key's best candidate and the line to paste, once per pair."""
    seen: set[str] = set()
    lines: list[str] = []
    leftovers = [(e["target"], "<-", e.get("hint")) for e in report["entries"]]
    leftovers += [(u["source"], "->", u.get("hint")) for u in report["unused"]]
    for key, arrow, hint in leftovers:
        if hint and hint["paste"] not in seen:
            seen.add(hint["paste"])
            lines.append(
                f"  {key} {arrow} {hint['candidate']} ({hint['confidence']:.2f})  "
                f"paste: {hint['paste']}"
            )
    return ["", "hints (best candidates)", *lines] if lines else []
