"""The report (``graft.report/v1``) and the manifest: typed, built once, and shown to humans.

:mod:`app.engine.report.models` holds the frozen models (their JSON form is the published
document), :mod:`app.engine.report.build` builds them from a plan and an execution, and
:mod:`app.engine.report.text` groups a report's keys and writes its text form.
"""

from app.engine.report.build import build_manifest, build_report, entries_digest, report_entries
from app.engine.report.models import (
    MANIFEST_SCHEMA,
    REPORT_SCHEMA,
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
    Summary,
    UnusedKey,
    Verification,
    Warning,
    WarningKind,
)
from app.engine.report.text import group_report, render_text

__all__ = [
    "MANIFEST_SCHEMA",
    "REPORT_SCHEMA",
    "AlignSuggestion",
    "Coverage",
    "Entry",
    "Hint",
    "InitRecordJson",
    "Manifest",
    "OutputSummary",
    "Report",
    "ReportSource",
    "ReportTarget",
    "RuleCount",
    "Summary",
    "UnusedKey",
    "Verification",
    "Warning",
    "WarningKind",
    "build_manifest",
    "build_report",
    "entries_digest",
    "group_report",
    "render_text",
    "report_entries",
]
