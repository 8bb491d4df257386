"""The report's typed form (``graft.report/v1``) and the manifest's (``graft.manifest/v1``).

Frozen pydantic models, built once by :func:`app.engine.report.build_report`. Their JSON form
(:meth:`Report.to_json`) is the published document: the keys in this order, optional keys left
out when they have no value, and each :class:`Warning` written as ``"<kind>: <message>"``.
The JSON Schemas in :mod:`app.engine.schemas` are generated from these models.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)

from app.engine.warning import WARNING_KINDS, Warning, WarningKind

__all__ = [
    "MANIFEST_SCHEMA",
    "REPORT_SCHEMA",
    "AlignSuggestion",
    "Count",
    "Coverage",
    "Entry",
    "EntryStatus",
    "Fraction",
    "Hint",
    "InitRecordJson",
    "Manifest",
    "OutputSummary",
    "Report",
    "ReportSource",
    "ReportTarget",
    "RuleCount",
    "Shape",
    "SourceFormat",
    "Summary",
    "UnusedKey",
    "Verification",
    "Warning",
    "WarningKind",
]

REPORT_SCHEMA: Literal["graft.report/v1"] = "graft.report/v1"
MANIFEST_SCHEMA: Literal["graft.manifest/v1"] = "graft.manifest/v1"

Count = Annotated[int, Field(ge=0)]
# int | float: a value keeps the type it was built with, so its JSON is unchanged.
Fraction = Annotated[int | float, WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1})]
Shape = list[Count]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SourceFormat = Literal[
    "torch-zip", "torch-legacy", "safetensors", "hf-sharded", "dcp", "deepspeed", "megatron"
]
EntryStatus = Literal["loaded", "adapted", "tied", "initialized", "kept", "missing"]
UnusedReason = Literal["dropped", "unexpected", "mismatched"]


def _schema_extra(schema: dict[str, Any], cls: type[Any]) -> None:
    """The published schema requires only what every v1 document has had: fields added
    since (``_added_later``) are written by this Graft but optional in the schema."""
    later: frozenset[str] = getattr(cls, "_added_later", frozenset())
    if "required" in schema and later:
        schema["required"] = [name for name in schema["required"] if name not in later]


class _Document(BaseModel):
    """A frozen part of a document; the fields named in ``_omitted_when_none`` are left out
    of its JSON when they are ``None`` (the others are written, ``null`` included)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, json_schema_extra=_schema_extra)
    _omitted_when_none: ClassVar[frozenset[str]] = frozenset()
    _added_later: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        omitted = type(self)._omitted_when_none
        if omitted and isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in omitted and v is None)}
        return data


WarningText = Annotated[
    Warning,
    WithJsonSchema({"type": "string", "pattern": "^(" + "|".join(WARNING_KINDS) + "): "}),
]


class ReportSource(_Document):
    """The source: its identity, format, chosen entry, and size."""

    _added_later = frozenset({"sha256", "stripped_prefix"})
    _omitted_when_none = frozenset({"name", "blake3"})
    # With several sources (a list of these), the name its keys carry: `NAME:KEY`.
    name: str | None = None
    sha256: Hex64 | None
    blake3: Hex64 | None = None
    format: SourceFormat
    entry: str | None
    stripped_prefix: str | None
    tensors: Count
    elements: Count


class ReportTarget(_Document):
    """The target: its kind, name, and size."""

    _added_later = frozenset({"name"})
    kind: Literal["template", "skeleton", "architecture"]
    name: str | None
    tensors: Count
    elements: Count


class Coverage(_Document):
    """How much of the target the source fed, by tensors and by elements."""

    tensors: Fraction
    elements: Fraction


class Summary(_Document):
    """Target keys by status, source keys by fate, and the coverage."""

    _added_later = frozenset({"tied"})
    _omitted_when_none = frozenset({"missing"})
    loaded: Count
    adapted: Count
    tied: Count
    initialized: Count
    kept: Count
    used: Count
    dropped: Count
    unexpected: Count
    mismatched: Count
    coverage: Coverage
    missing: Count | None = None


class InitRecordJson(_Document):
    """How an initialised key was filled: the function, its arguments, its seed."""

    fn: str
    args: dict[str, Any]
    seed: Count


class Hint(_Document):
    """A leftover key's best candidate on the other side, and the recipe line that would pair
    them (``rename: [{key: A, to: B}]``), for the user to paste."""

    candidate: str
    confidence: Fraction
    paste: str


class Entry(_Document):
    """One target key: its status, what fed it, the rules and ops that ran, its digest; when
    nothing fed it, maybe a ``hint``."""

    _added_later = frozenset({"source_shape", "digest", "hint"})
    _omitted_when_none = frozenset({"source_shapes", "init", "benign", "stored_as", "hint"})
    target: Annotated[str, Field(min_length=1)]
    status: EntryStatus
    sources: list[str]
    rules: list[str]
    ops: list[str]
    shape: Shape
    source_shape: Shape | None
    dtype: str
    digest: Annotated[str, Field(pattern=r"^blake3:[0-9a-f]{64}$")] | None
    source_shapes: list[Shape] | None = None
    init: InitRecordJson | None = None
    benign: bool | None = None
    # A tied duplicate stored once: not in the file; the key that holds its bytes.
    stored_as: str | None = None
    hint: Hint | None = None


class UnusedKey(_Document):
    """One source key that fed nothing, why, the rule that decided it, and maybe a ``hint``."""

    _added_later = frozenset({"rule", "hint"})
    _omitted_when_none = frozenset({"renamed", "hint"})
    source: str
    reason: UnusedReason
    rule: str | None
    renamed: str | None = None
    hint: Hint | None = None


class AlignSuggestion(_Document):
    """A likely source -> target match (``align``, SPEC §2.2): its evidence, the ops it
    carries (``transpose``, ``split``, ``merge``), and, when ``ambiguous``, every candidate."""

    _added_later = frozenset({"ops", "ambiguous", "candidates"})
    source: str
    target: str
    confidence: Fraction
    why: str
    ops: list[str] = []
    ambiguous: bool = False
    candidates: list[dict[str, Any]] = []


class RuleCount(_Document):
    """One recipe rule, cited, with the keys (or groups) it matched and the keys it changed."""

    _added_later = frozenset({"pattern", "applied"})
    # A recipe rule (``adapt[0]``), the target architecture's own (``arch-default``), or
    # the recipe's ``lora`` step (one, so not indexed).
    rule: Annotated[str, Field(pattern=r"^([a-z_]+\[[0-9]+\]|arch-default|lora)$")]
    matched: Count
    applied: Count = Field(description="the keys (or groups) it changed, at most `matched`")
    pattern: str


class Verification(_Document):
    """The output check (and, for an architecture target, the model checks)."""

    _omitted_when_none = frozenset(
        {"unequal", "strict_error", "forward", "equivalence", "parity", "rederived"}
    )
    checked: Count
    equal: Count
    strict_load: bool | None
    unequal: list[str] | None = None
    strict_error: str | None = None
    forward: dict[str, Any] | None = None
    equivalence: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    rederived: dict[str, Any] | None = None


class OutputSummary(_Document):
    """What was written: the format, the files, how tensors got there, the entries' digest."""

    _added_later = frozenset({"copied", "materialised", "copy_methods", "report_sha256"})
    format: str
    files: list[Annotated[str, Field(min_length=1)]]
    copied: Count
    materialised: Count
    copy_methods: dict[str, Count]
    report_sha256: Hex64


class Report(_Document):
    """A conversion's report (SPEC §3): every target key and every unused source key
    accounted for. Objects allow properties beyond those listed, so a newer Graft's additions
    validate; the listed ones are pinned."""

    _added_later = frozenset({"rules"})
    _omitted_when_none = frozenset({"errors", "output"})
    schema_: Literal["graft.report/v1"] = Field(default=REPORT_SCHEMA, alias="schema")
    ok: bool
    # One source; several are a list, each with its `name` (their keys read `NAME:KEY`).
    source: ReportSource | list[ReportSource]
    target: ReportTarget
    summary: Summary
    entries: list[Entry]
    unused: list[UnusedKey]
    suggestions: list[AlignSuggestion]
    rules: list[RuleCount]
    warnings: list[WarningText]
    verification: Verification | Literal["skipped"] | None
    errors: list[str] | None = None
    output: OutputSummary | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``graft.report/v1`` document, as ``json.dumps`` writes it."""
        data: dict[str, Any] = self.model_dump(by_alias=True)
        return data

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Report:
        """A report from its document (one that crossed a process, or was stored)."""
        return cls.model_validate(document)


class Manifest(_Document):
    """What the receiving side must do besides loading (SPEC §1): keys to freeze, BatchNorm
    modules to keep in eval mode."""

    schema_: Literal["graft.manifest/v1"] = Field(default=MANIFEST_SCHEMA, alias="schema")
    frozen: Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(json_schema_extra={"uniqueItems": True})
    ]
    bn_eval: Annotated[list[str], Field(json_schema_extra={"uniqueItems": True})]

    def to_json(self) -> dict[str, Any]:
        """The ``graft.manifest/v1`` document."""
        data: dict[str, Any] = self.model_dump(by_alias=True)
        return data
