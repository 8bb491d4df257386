"""Check an output against its attestation's statement: every file's sha256, every tensor's
digest, and the statement against what the output itself records (SPEC §3.3).

Each finding names the file, the tensor or the statement's field at fault; an empty list
means the output is what the statement says it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from app.engine.errors import GraftError, UnreadableCheckpointError
from app.engine.output.digests import digest_range, tensor_digest
from app.engine.provenance import canonical_json, read_output_metadata
from app.engine.readers import open_source, sha256_file

__all__ = ["check_files", "check_statement", "check_tensors"]


def check_files(statement: dict[str, Any], base: Path) -> list[str]:
    """Every subject file exists under ``base`` with the attested sha256."""
    findings = []
    for subject in statement["subject"]:
        name = str(subject.get("name", ""))
        path = base / name
        if not name or ".." in Path(name).parts:
            findings.append(f"the statement names an unsafe file {name!r}")
        elif not path.is_file():
            findings.append(f"file {name} is missing")
        elif sha256_file(path) != subject.get("digest", {}).get("sha256"):
            findings.append(f"file {name}: its sha256 differs from the attestation")
    return findings


def check_tensors(statement: dict[str, Any], output: Path) -> list[str]:
    """Every tensor of ``output`` has the digest the statement attests, and no tensor is
    missing or extra. Only the ranges are read (BLAKE3, as the report's digests)."""
    attested: dict[str, str] = statement["predicate"].get("tensors") or {}
    findings = []
    try:
        with open_source(output, strip_prefixes="none") as out:
            for key in out.tensors:
                expected = attested.get(key)
                if expected is None:
                    findings.append(f"tensor {key} is not in the attestation")
                    continue
                span = out.byte_range(key)
                digest = digest_range(*span)[0] if span else tensor_digest(out.read(key))
                if digest != expected:
                    findings.append(f"tensor {key}: its bytes differ from the attested digest")
            findings += [f"tensor {k} is missing" for k in attested if k not in out.tensors]
    except GraftError as exc:
        findings.append(f"the output cannot be read: {exc.message}")
    return findings


def check_statement(statement: dict[str, Any], output: Path) -> list[str]:
    """The statement agrees with itself and with the output's own metadata: recipe and its
    sha256, target, source identity, report digest."""
    predicate = statement["predicate"]
    findings = []
    recipe = predicate.get("recipe")
    if hashlib.sha256(canonical_json(recipe)).hexdigest() != predicate.get("recipe_sha256"):
        findings.append("the statement's recipe does not match its recipe_sha256")
    try:
        meta = read_output_metadata(output)
    except UnreadableCheckpointError:
        return findings  # a torch-format output records nothing to compare with
    except GraftError as exc:
        return [*findings, f"the output's metadata cannot be read: {exc.message}"]
    checks = {
        "recipe": (recipe, meta.recipe),
        "target": (predicate.get("target"), meta.target),
        "report sha256": ((predicate.get("report") or {}).get("sha256"), meta.report_sha256),
        "source identity": (
            {k: v for k, v in (predicate.get("source") or {}).items() if k != "format"},
            meta.source,
        ),
    }
    for field, (stated, recorded) in checks.items():
        if stated != recorded:
            findings.append(f"the statement's {field} differs from the output's metadata")
    return findings
