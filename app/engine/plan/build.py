"""Plan a conversion from headers alone: for every target key, what feeds it and how.

The order is fixed (SPEC §2.1): strip prefixes, apply renames in order, apply drop/only, form
the split/merge/copy groups (:mod:`app.engine.plan.feeds`), then match what they feed against
target keys and apply every matching ``transform`` in order. Shapes that still differ go to
the first adapt rule whose ``match`` fits the target key, or are ``mismatched``. Target keys
nothing feeds are ``kept`` or ``initialized`` per ``missing``. Every rule's match count is
kept (:mod:`app.engine.plan.rule_matches`). No tensor data is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from app.engine.errors import InvalidRecipeError
from app.engine.meta import TensorInfo, is_floating
from app.engine.ops.adapt import describe_adapt, describe_cast
from app.engine.ops.initialize import InitRecord, resolve_init
from app.engine.ops.multi import Part, describe_transform
from app.engine.plan.arch_defaults import ARCH_DEFAULT, ArchDefaults
from app.engine.plan.feeds import Feed, plan_feeds
from app.engine.plan.hints import Hint, add_hints
from app.engine.plan.rule_matches import RuleMatch, count_applied, count_rules, judge_rules
from app.engine.plan.slices import SLICES_RULE, Sliced, slice_keys
from app.engine.readers import SeveralSources, Source
from app.engine.recipe import AdaptRule, InitRule, KeyMatcher, Recipe, cite, compile_pattern
from app.engine.recipe.rename import Renamed, RenameOutcome, filter_keys, rename_keys
from app.engine.recipe.tensor_rules import TransformRule, TransposeTransform
from app.engine.target import Target
from app.engine.warning import Warning

__all__ = ["Plan", "PlanEntry", "Suggestion", "Unused", "build_plan"]

Status = Literal["loaded", "adapted", "tied", "initialized", "kept", "missing"]
UnusedReason = Literal["dropped", "unexpected", "mismatched"]

# Below this share of target tensors fed by the source, a conversion is flagged loudly.
LOW_COVERAGE = 0.5


@dataclass
class PlanEntry:
    """One target key: its fate, and everything needed to carry it out."""

    target: str
    status: Status
    shape: tuple[int, ...]
    dtype: str  # the output dtype
    module: str | None = None
    sources: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    source_shape: tuple[int, ...] | None = None
    source_dtype: str | None = None
    adapt: AdaptRule | None = None
    init: InitRecord | None = None
    benign: bool = False  # a num_batches_tracked the source lacks: PyTorch fills it itself
    part: Part | None = None  # split: the part of the source taken
    merge_dim: int | None = None  # merge: the sources are concatenated along this dim
    source_shapes: list[tuple[int, ...]] | None = None  # merge: each source's shape
    transforms: list[TransformRule] = field(default_factory=list)
    stored_as: str | None = None  # a tied duplicate not written: the key that holds its bytes
    hint: Hint | None = None  # unfed: the best source candidate and the rule to paste

    @property
    def fed(self) -> bool:
        return self.status in ("loaded", "adapted", "tied")


@dataclass(frozen=True)
class Unused:
    """A source key that feeds nothing, and why."""

    source: str
    reason: UnusedReason
    rule: str | None = None
    renamed: str | None = None
    hint: Hint | None = None  # the best target candidate and the rule to paste


@dataclass(frozen=True)
class Suggestion:
    """A likely source -> target match for keys left over after renames (``align``)."""

    source: str
    target: str
    confidence: float
    why: str
    ops: list[str] = field(default_factory=list)
    ambiguous: bool = False
    candidates: list[dict[str, object]] = field(default_factory=list)
    applied: bool = False  # confident and one-to-one: `align: apply` loads it

    def as_json(self) -> dict[str, object]:
        """The report's ``suggestions`` entry (SPEC §2.2)."""
        return {
            "source": self.source, "target": self.target, "confidence": self.confidence,
            "why": self.why, "ops": self.ops, "ambiguous": self.ambiguous,
            "candidates": self.candidates,
        }  # fmt: skip


@dataclass
class Plan:
    """The conversion decided, before any tensor moves."""

    entries: list[PlanEntry]
    unused: list[Unused]
    suggestions: list[Suggestion]
    warnings: list[Warning]
    failures: list[str]  # what the recipe's policy refuses; non-empty means not ok
    stripped_prefix: str | None
    dtype: str = "keep"  # the output dtype policy (recipe's, or the caller's override)
    rules: list[RuleMatch] = field(default_factory=list)  # every recipe rule: `matched`, `applied`

    @property
    def ok(self) -> bool:
        return not self.failures


def _strip_helpful_prefix(source: Source, target: Target, recipe: Recipe) -> None:
    """``strip_prefixes: auto`` also drops ``model.`` when every key has it and it helps."""
    if recipe.source.strip_prefixes != "auto" or source.common_prefix(("model.",)) is None:
        return
    before = len(source.tensors.keys() & target.tensors.keys())
    after = sum(1 for k in source.tensors if k.removeprefix("model.") in target.tensors)
    if after > before:
        source.strip_prefix("model.")


def _output_dtype(stored: str, dtype: str) -> str:
    return dtype if dtype != "keep" and is_floating(stored) else stored


def _matchers(
    rules: Sequence[AdaptRule] | Sequence[InitRule] | Sequence[TransformRule], section: str
) -> list[KeyMatcher]:
    """Each rule's ``match``, compiled once per plan (not once per key)."""
    return [compile_pattern(rule.match, rule=cite(section, i)) for i, rule in enumerate(rules)]


def _first_rule(matchers: Sequence[KeyMatcher], key: str) -> int:
    return next((i for i, m in enumerate(matchers) if m.matches(key)), -1)


def suggest_alignment(
    sources: dict[str, TensorInfo], targets: dict[str, TensorInfo], *, min_confidence: float = 0.9
) -> list[Suggestion]:
    """Matches between leftover keys (SPEC §2.2), from :mod:`app.engine.align`."""
    from app.engine.align import match_keys

    matches = match_keys(sources, targets, min_confidence=min_confidence)
    return [
        Suggestion(", ".join(m.sources), m.target, m.confidence, m.why, list(m.ops), m.ambiguous,
                   [{"source": c.source, "confidence": c.confidence} for c in m.candidates],
                   m.applied and len(m.sources) == 1 and not m.group)
        for m in matches if m.sources
    ]  # fmt: skip


def build_plan(
    source: Source, target: Target, recipe: Recipe, *, dtype: str | None = None, hints: bool = True
) -> Plan:
    """Decide every target key's fate from headers alone.

    Args:
        source: the opened source (its wrapper prefixes already handled by ``open_source``).
        target: the target description.
        recipe: a validated recipe.
        dtype: an output dtype overriding ``recipe.dtype`` (``None`` keeps the recipe's).
        hints: give leftover keys their best candidate (:mod:`app.engine.plan.hints`).

    Returns:
        The plan. Policy refusals (strict, ``shape_mismatch: error``, ``missing: error``) are
        collected in ``failures``, not raised, so the report can still be written.

    Raises:
        InvalidRecipeError: a rule cannot apply (collision, empty key, an adapt op that cannot
            produce the target shape).
    """
    out_dtype = dtype or recipe.dtype
    _strip_helpful_prefix(source, target, recipe)
    sliced, renaming = _rename(source, recipe)
    by_new = {r.key: r for r in renaming.renamed.values()}
    kept_keys, dropped = filter_keys(list(by_new), drop=recipe.drop, only=recipe.only)
    unused: list[Unused] = [Unused(k, "dropped", SLICES_RULE) for k in sliced.dropped]
    unused += [Unused(by_new[k].source, "dropped", rule, k) for k, rule in dropped.items()]
    available = {k: by_new[k] for k in kept_keys}
    feeds = plan_feeds(available, dropped, source.tensors, recipe)
    pending = dict(feeds.by_target)
    adapt_matchers = _matchers(recipe.adapt, "adapt")
    declared = ArchDefaults(target)
    init_matchers = _matchers(recipe.init, "init")
    transform_matchers = _matchers(recipe.transform, "transform")
    entries: list[PlanEntry] = []
    mismatched: list[str] = []
    for key, info in target.tensors.items():
        feed = pending.pop(key, None)
        entry = PlanEntry(key, "missing", info.shape, info.dtype, module=info.module)
        if feed is not None:
            shape = _feed(entry, feed, recipe.transform, transform_matchers)
            if shape == info.shape:
                entry.status = "tied" if feed.tied else "loaded"
            elif (why := _fit(entry, shape, recipe, adapt_matchers, declared, mismatched)) != "":
                unused += [Unused(s, "mismatched", why, key) for s in feed.sources]
                _unfeed(entry)
            if entry.fed:
                entry.dtype = _output_dtype(feed.dtype, out_dtype)
                if (cast := describe_cast(feed.dtype, entry.dtype, key=key)) is not None:
                    entry.ops.append(cast)
        if not entry.fed:
            _fill_missing(entry, info, target, recipe, out_dtype, init_matchers)
            if feed is not None and entry.status == "initialized" and declared.reinit(key):
                entry.rules.insert(0, ARCH_DEFAULT)
        entries.append(entry)
    fed_sources = {s for e in entries if e.fed for s in e.sources}
    reported = {u.source for u in unused}
    for key, feed in pending.items():
        for src in feed.sources:
            if src not in fed_sources and src not in reported:
                reported.add(src)
                unused.append(Unused(src, "unexpected", None, key))
    plan = Plan(entries, unused, [], [], [], source.stripped_prefix, out_dtype)
    plan.rules = _step_rules(source, recipe, sliced)
    plan.rules += count_rules(recipe, renaming.matched, list(by_new), feeds.matched, target)
    _align(plan, source, target, recipe)
    plan.rules = declared.listed(
        count_applied([*plan.rules, declared.rule()], (e.rules for e in plan.entries))
    )
    if hints:
        plain = {k for k, f in feeds.by_target.items() if f.plain}
        add_hints(plan, source, target, plain=plain, min_confidence=recipe.align_min_confidence)
    _judge(plan, recipe, mismatched)
    judge_rules(plan.rules, recipe, plan.failures, plan.warnings)
    return plan


def _rename(source: Source, recipe: Recipe) -> tuple[Sliced, RenameOutcome]:
    """``slices``, then ``rename``: where each source key ends up, cited by both."""
    names = list(source.parts) if isinstance(source, SeveralSources) else []
    sliced = slice_keys(list(source.tensors), recipe.slices, names=names)
    renaming = rename_keys(sliced.keys, recipe.rename)
    changed = source.changed if isinstance(source, SeveralSources) else {}
    if not sliced.origin and not changed:
        return sliced, renaming
    renamed: dict[str, Renamed] = {}
    for key, r in renaming.renamed.items():
        origin, citation = sliced.origin.get(key, (key, None))
        rules = (citation, *r.rules) if citation else r.rules
        step = changed.get(origin)  # read through a step (`lora`) before any rule
        renamed[origin] = Renamed(origin, r.key, (step, *rules) if step else rules)
    return sliced, RenameOutcome(renamed, renaming.matched)


def _step_rules(source: Source, recipe: Recipe, sliced: Sliced) -> list[RuleMatch]:
    """``lora`` and ``slices``, which act before the renames, with what they took."""
    rules = []
    if isinstance(source, SeveralSources) and recipe.lora is not None:
        rules.append(RuleMatch("lora", len(source.changed), f"merge {recipe.lora.merge}"))
    return rules + [
        RuleMatch(cite(SLICES_RULE, i), n, f"layers {r.layers} of {r.from_ or 'the source'}")
        for i, (n, r) in enumerate(zip(sliced.matched, recipe.slices, strict=True))
    ]


def _feed(
    entry: PlanEntry,
    feed: Feed,
    transforms: Sequence[TransformRule],
    matchers: Sequence[KeyMatcher],
) -> tuple[int, ...]:
    """Record what feeds ``entry`` and apply every matching transform; the shape it ends with."""
    entry.sources, entry.rules = list(feed.sources), list(feed.rules)
    entry.part, entry.merge_dim, entry.source_shapes = feed.part, feed.merge_dim, feed.source_shapes
    entry.source_dtype = feed.dtype
    entry.source_shape = feed.source_shape
    entry.ops = [feed.op] if feed.op else []
    shape = feed.shape
    for index, matcher in enumerate(matchers):
        if not matcher.matches(entry.target):
            continue
        rule = transforms[index]
        try:
            shape, op = describe_transform(rule, shape, key=entry.target)
        except InvalidRecipeError as exc:
            raise InvalidRecipeError(exc.message, rule=cite("transform", index)) from None
        entry.transforms.append(rule)
        entry.rules.append(cite("transform", index))
        entry.ops.append(op)
    return shape


def _fit(
    entry: PlanEntry,
    shape: tuple[int, ...],
    recipe: Recipe,
    adapt_matchers: Sequence[KeyMatcher],
    declared: ArchDefaults,
    mismatched: list[str],
) -> str | None:
    """Adapt ``entry`` from ``shape``: by the first ``adapt`` rule that matches it, else by the
    architecture's declared default.

    Returns:
        ``""`` when adapted; else the rule that leaves it unfed: ``arch-default`` (a classifier
        to re-initialise), or ``None`` (a shape mismatch, recorded in ``mismatched``).
    """
    key, target_shape = entry.target, entry.shape
    index = _first_rule(adapt_matchers, key)
    if index >= 0:
        _adapt(entry, recipe.adapt[index], cite("adapt", index), shape, target_shape)
        return ""
    default = declared.default(key, shape, target_shape)
    if default == "init":
        return ARCH_DEFAULT
    if default is not None:
        _adapt(entry, default, ARCH_DEFAULT, shape, target_shape)
        return ""
    mismatched.append(f"{key}: source {list(shape)} vs target {list(target_shape)}")
    return None


def _unfeed(entry: PlanEntry) -> None:
    entry.sources, entry.rules, entry.ops, entry.transforms = [], [], [], []
    entry.source_shape = entry.source_dtype = None
    entry.part = entry.merge_dim = entry.source_shapes = None


def _adapt(
    entry: PlanEntry,
    rule: AdaptRule,
    citation: str,
    shape: tuple[int, ...],
    target_shape: tuple[int, ...],
) -> None:
    try:
        op = describe_adapt(rule.op, shape, target_shape, key=entry.target, **rule.options())
    except InvalidRecipeError as exc:
        raise InvalidRecipeError(exc.message, rule=citation) from None
    entry.status, entry.adapt = "adapted", rule
    entry.rules.append(citation)
    entry.ops.append(op or rule.op)


def _fill_missing(
    entry: PlanEntry,
    info: TensorInfo,
    target: Target,
    recipe: Recipe,
    out_dtype: str,
    init_matchers: Sequence[KeyMatcher],
) -> None:
    entry.benign = info.key.rsplit(".", 1)[-1] == "num_batches_tracked"
    keep = target.has_values and (recipe.missing in ("auto", "keep") or entry.benign)
    if keep:
        entry.status = "kept"
        entry.dtype = _output_dtype(info.dtype, out_dtype)
        return
    if recipe.missing in ("keep", "error") and not entry.benign:
        entry.status = "missing"
        return
    index = _first_rule(init_matchers, info.key)
    if index < 0:
        entry.status = "missing"
        return
    rule = recipe.init[index]
    args = rule.model_dump(exclude={"match", "fn"}, exclude_none=True)
    try:
        entry.init = resolve_init(
            info.key,
            info.shape,
            info.dtype,
            fn=rule.fn,
            args=args,
            module=info.module,
            seed=recipe.seed,
        )
    except InvalidRecipeError as exc:
        raise InvalidRecipeError(exc.message, rule=cite("init", index)) from None
    entry.status = "initialized"
    entry.rules = [cite("init", index)]
    entry.ops = [f"init({entry.init.fn})"]
    entry.dtype = _output_dtype(info.dtype, out_dtype)


def _align(plan: Plan, source: Source, target: Target, recipe: Recipe) -> None:
    if recipe.align == "off":
        return
    leftover_sources = {
        u.source: TensorInfo(
            u.source, source.tensors[u.source].shape, source.tensors[u.source].dtype
        )
        for u in plan.unused
        if u.reason == "unexpected"
    }
    # Benign keys (a num_batches_tracked the source lacks under this name) take part too: a
    # renamed BatchNorm's counter must be carried over, not left as an unexpected source key.
    leftover_targets = {e.target: target.tensors[e.target] for e in plan.entries if not e.fed}
    plan.suggestions = suggest_alignment(
        leftover_sources, leftover_targets, min_confidence=recipe.align_min_confidence
    )
    if recipe.align != "apply":
        return
    applied = {s.target: s for s in plan.suggestions if s.applied}
    for entry in plan.entries:
        suggestion = applied.get(entry.target)
        if suggestion is None:
            continue
        src = source.tensors[suggestion.source]
        entry.status, entry.sources, entry.rules = "loaded", [suggestion.source], ["align"]
        entry.benign = False
        entry.source_shape, entry.source_dtype, entry.init = src.shape, src.dtype, None
        entry.dtype = _output_dtype(src.dtype, plan.dtype)
        entry.ops = [c] if (c := describe_cast(src.dtype, entry.dtype)) else []
        if "transpose" in suggestion.ops:
            entry.transforms = [TransposeTransform(match=entry.target, op="transpose")]
            entry.ops.insert(0, "transpose(0,1)")
    used = {s.source for s in applied.values()}
    plan.unused = [u for u in plan.unused if u.source not in used]
    plan.suggestions = [s for s in plan.suggestions if s.target not in applied]


def _judge(plan: Plan, recipe: Recipe, mismatched: list[str]) -> None:
    """Collect warnings and the policy's refusals."""
    missing = [e.target for e in plan.entries if e.status == "missing"]
    if missing:
        plan.failures.append(f"{len(missing)} target keys have no value: {_few(missing)}")
    if mismatched and recipe.shape_mismatch == "error":
        plan.failures.append(f"shape mismatch (shape_mismatch: error): {_few(mismatched)}")
    if recipe.strict:
        not_fed = [e.target for e in plan.entries if not e.fed and not e.benign]
        stray = [u.source for u in plan.unused if u.reason != "dropped"]
        if not_fed:
            plan.failures.append(f"strict: target keys not loaded: {_few(not_fed)}")
        if stray:
            plan.failures.append(f"strict: source keys not used: {_few(stray)}")
    # Counted as the report's header and coverage count: every target tensor.
    total = len(plan.entries)
    fed = sum(1 for e in plan.entries if e.fed)
    if not recipe.allow_empty and fed == 0:
        plan.failures.append(
            "empty: nothing was loaded or adapted from the source (allow_empty: false); check "
            "renames, prefixes and only/drop, or set allow_empty: true to initialise on purpose"
        )
    if total and fed == 0:
        plan.warnings.append(
            Warning(
                kind="nothing_loaded",
                message=f"none of the {total} target tensors came from the source; "
                "check renames and prefixes (align: suggest lists likely matches)",
            )
        )
    elif total and fed / total < LOW_COVERAGE:
        plan.warnings.append(
            Warning(
                kind="low_coverage",
                message=f"only {fed} of {total} target tensors came from the source",
            )
        )
    for text in mismatched:
        plan.warnings.append(Warning(kind="shape_mismatch", message=text))


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")
