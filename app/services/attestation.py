"""Attest, verify and replay outputs (SPEC §3.3): the use cases over :mod:`app.engine.attest`.

The signing key comes from the caller (the CLI's ``--sign-key`` / ``GRAFT_SIGNING_KEY``, the
service's setting) as PEM bytes; the engine never reads it. Replay rebuilds a conversion
from the output's own metadata (recipe, target, seed, source identity) and proves the result
byte-identical.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import __version__
from app.engine.attest import (
    STATEMENT_TYPE,
    AttestationError,
    attestation_path,
    build_statement,
    open_attestation,
    sign,
)
from app.engine.attest_check import check_files, check_statement, check_tensors
from app.engine.errors import GraftError, InvalidTargetError, UnreadableCheckpointError
from app.engine.model_signature import model_signature, signature_path
from app.engine.options import WriteOptions
from app.engine.provenance import OutputMetadata, output_metadata, read_output_metadata
from app.engine.readers import sha256_file
from app.engine.recipe import load_recipe
from app.engine.target_spec import parse_target_spec

__all__ = [
    "Verification",
    "attest_output",
    "output_files",
    "output_statement",
    "replay_output",
    "sign_job_statement",
    "streamed_statement",
    "torch_version",
    "verify_output",
]


def output_files(weights: Path) -> list[Path]:
    """The files an output consists of: itself, or a folder's files (shards and index)."""
    if weights.is_dir():
        return sorted(p for p in weights.iterdir() if p.is_file())
    return [weights]


def attest_output(
    weights: Path,
    report: dict[str, Any],
    *,
    recipe: dict[str, Any],
    signing_key: bytes | None = None,
    file_sha256: Mapping[Path, str] | None = None,
) -> Path:
    """Write ``<weights>.intoto.json``: the statement, or its DSSE envelope with a key.

    Args:
        weights: the written output (a file, or a folder of shards).
        report: the conversion's report.
        recipe: the recipe as JSON, for outputs that cannot carry it (``--format torch``);
            a safetensors output's own metadata is what is attested.
        signing_key: an unencrypted PEM private key (ECDSA P-256 or Ed25519), or ``None``.
        file_sha256: the digests of files hashed as they were written (the conversion's
            ``file_sha256``), so they are not read again.

    Returns:
        The attestation's path.
    """
    statement = output_statement(weights, report, recipe=recipe, file_sha256=file_sha256)
    document = sign(statement, signing_key) if signing_key is not None else statement
    path = attestation_path(weights)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    if signing_key is not None and _is_ec(signing_key):
        # The OpenSSF format too (its key mode takes EC keys only; Ed25519 signs the DSSE
        # attestation alone).
        bundle = model_signature(weights, signing_key)
        signature_path(weights).write_text(json.dumps(bundle, indent=2) + "\n")
    return path


def output_statement(
    weights: Path,
    report: dict[str, Any],
    *,
    recipe: dict[str, Any],
    file_sha256: Mapping[Path, str] | None = None,
) -> dict[str, Any]:
    """The in-toto statement of a written output (unsigned): :func:`attest_output`'s, and
    what a job's sandbox child writes for the worker to sign.

    Args:
        weights: the written output (a file, or a folder of shards).
        report: the conversion's report.
        recipe: the recipe as JSON, for outputs that cannot carry it (``--format torch``).
        file_sha256: the digests of files hashed as they were written; the others are
            hashed here.
    """
    try:
        metadata = read_output_metadata(weights)
    except UnreadableCheckpointError:
        metadata = _from_report(report, recipe)
    return build_statement(
        output_files(weights),
        base=weights if weights.is_dir() else weights.parent,
        report=report,
        metadata=metadata,
        versions={"graft": __version__, "torch": torch_version()},
        known_sha256=file_sha256,
    )


def streamed_statement(name: str, header: bytes, report: dict[str, Any]) -> dict[str, Any]:
    """The statement of a streamed output (no local file), its subject's digest left empty:
    the worker fills it in from the bytes it stored (:func:`sign_job_statement` then checks it).

    Args:
        name: the weights file's name.
        header: the output's first bytes: the length prefix and the final header.
        report: the conversion's report.
    """
    import struct

    (length,) = struct.unpack("<Q", header[:8])
    meta = json.loads(header[8 : 8 + length]).get("__metadata__") or {}
    statement = build_statement(
        [],
        base=Path(),
        report=report,
        metadata=output_metadata(meta, name),
        versions={"graft": __version__, "torch": torch_version()},
    )
    statement["subject"] = [{"name": name, "digest": {"sha256": ""}}]
    return statement


def torch_version() -> str:
    """``torch.__version__`` without importing torch when nothing has (a byte-copy conversion
    never does: importing it only for its version cost more CPU than the copy)."""
    loaded = sys.modules.get("torch")
    if loaded is not None:
        return str(loaded.__version__)
    from importlib.metadata import version

    return version("torch")


def sign_job_statement(
    statement: dict[str, Any],
    *,
    weights: tuple[str, str] | list[tuple[str, str]],
    signing_key: bytes | None,
) -> dict[str, Any]:
    """A job's attestation: the statement its sandbox child wrote, checked against the
    weights the worker published, and signed (a DSSE envelope) when there is a key.

    Args:
        statement: what the child wrote (not trusted: it must attest exactly the weights).
        weights: the published weights' ``(filename, sha256)``; a folder output's files,
            each ``(relative name, sha256)``, sorted by name.
        signing_key: the service's PEM key (``GRAFT_SIGNING_KEY``), or None.

    Raises:
        AttestationError: the statement does not attest exactly those weights.
    """
    files = [weights] if isinstance(weights, tuple) else weights
    subject = [{"name": name, "digest": {"sha256": sha256}} for name, sha256 in files]
    written = statement.get("subject")
    if isinstance(written, list) and not isinstance(weights, tuple):
        written = sorted(written, key=lambda s: str(s.get("name")) if isinstance(s, dict) else "")
    if statement.get("_type") != STATEMENT_TYPE or written != subject:
        raise AttestationError(
            "the conversion's statement does not attest the published weights "
            + ", ".join(name for name, _ in files[:3])
        )
    return sign(statement, signing_key) if signing_key is not None else statement


def _is_ec(private_key_pem: bytes) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        return False
    return isinstance(key, ec.EllipticCurvePrivateKey)


def _from_report(report: dict[str, Any], recipe: dict[str, Any]) -> OutputMetadata:
    """What a torch-format output would record, were there a place for it: the target is
    only named (a replay needs a safetensors output)."""
    source = _source_identity(report["source"])
    target = {"kind": report["target"]["kind"], "name": report["target"].get("name")}
    digest = (report.get("output") or {}).get("report_sha256")
    return OutputMetadata(recipe, target, source, digest, __version__)


@dataclass
class Verification:
    """What ``graft verify`` found.

    Attributes:
        findings: each mismatch, naming the file, tensor or field; empty when verified.
        signed_by: the key id that verified the signature, when one was checked.
        replayed: whether a replay from the source proved byte identity.
    """

    findings: list[str] = field(default_factory=list)
    signed_by: str | None = None
    replayed: bool = False


def verify_output(
    output: Path,
    *,
    public_key: bytes | None = None,
    source: Path | None = None,
    template: Path | None = None,
) -> Verification:
    """Check ``output`` against its attestation, and with ``source``, replay it.

    Raises:
        AttestationError: a wrong key or a tampered statement (exit 1).
        GraftError: no attestation, or an unreadable one (exit 2).
    """
    path = attestation_path(output)
    if not path.is_file():
        raise GraftError(f"{path} is missing: an output is verified against its attestation")
    try:
        document = json.loads(path.read_text())
    except ValueError:
        raise GraftError(f"{path} is not JSON") from None
    statement, signed_by = open_attestation(document, public_key)
    base = output if output.is_dir() else output.parent
    result = Verification(signed_by=signed_by)
    result.findings += check_files(statement, base)
    result.findings += check_statement(statement, output)
    result.findings += check_tensors(statement, output)
    if source is not None and not result.findings:
        with tempfile.TemporaryDirectory() as tmp:
            rebuilt = replay_output(output, source, out=Path(tmp) / output.name, template=template)
            result.findings += compare_outputs(output, rebuilt)
        result.replayed = not result.findings
    return result


def replay_output(output: Path, source: Path, *, out: Path, template: Path | None = None) -> Path:
    """Rebuild ``output`` from its own metadata and ``source``, written to ``out``.

    Raises:
        GraftError: the output lacks what a replay needs, a template target without
            ``template`` (or with another one), or the conversion fails.
    """
    from app.services.conversion import ConversionRequest, PathSink, run_conversion

    meta = read_output_metadata(output)
    if meta.target is None:
        raise GraftError(f"{output} does not record its target (written before Graft 21)")
    spec, files = _target(meta.target, template)
    if output.is_dir():
        raise GraftError("replaying a sharded output is not supported yet; convert a file")
    digest = next(iter(meta.source), "none")
    recipe = load_recipe(meta.recipe)
    if recipe.sources:
        raise GraftError(
            f"{output} was made from several sources ({', '.join(recipe.sources)}); replaying "
            "it is not supported yet: run its recipe again with `graft convert NAME=PATH …`"
        )
    request = ConversionRequest(
        source=[source],
        target=spec,
        target_files=files,
        recipe=recipe,
        options=WriteOptions(source_digest=digest),  # type: ignore[arg-type]
    )
    outcome = run_conversion(request, PathSink(out), limits=None)
    if not outcome.ok or outcome.weights is None:
        errors = "; ".join(outcome.report.get("errors", []))
        raise GraftError(f"the replayed conversion was refused: {errors}")
    return outcome.weights


def _target(description: dict[str, Any], template: Path | None) -> tuple[Any, list[Path]]:
    kind = description.get("kind")
    if kind == "architecture":
        spec = {"architecture": description["architecture"], "kwargs": description["kwargs"]}
        return parse_target_spec(spec), []
    if kind == "skeleton":
        return parse_target_spec({"skeleton": description["skeleton"]}), []
    if template is None:
        raise InvalidTargetError("the output was made for a template target: give --target")
    if sha256_file(template) != description.get("sha256"):
        raise InvalidTargetError(
            f"{template} is not the template the output was made for (sha256 differs)"
        )
    return parse_target_spec({"checkpoint": str(template)}), [template]


def compare_outputs(original: Path, rebuilt: Path) -> list[str]:
    """Byte identity of two outputs; when they differ, the tensors (or header) that do."""
    if original.read_bytes() == rebuilt.read_bytes():
        return []
    from app.engine.readers import open_source

    findings = []
    with (
        open_source(original, strip_prefixes="none") as a,
        open_source(rebuilt, strip_prefixes="none") as b,
    ):
        for key in sorted(a.tensors.keys() | b.tensors.keys()):
            if key not in a.tensors or key not in b.tensors:
                findings.append(f"tensor {key} is in only one of the output and the replay")
            elif not _same_tensor(a.read(key), b.read(key)):
                findings.append(f"tensor {key}: the replay gives other bytes")
        if a.metadata != b.metadata:
            findings.append("the replay's metadata differs from the output's")
    return findings or ["the replay's file differs from the output's, byte for byte"]


def _same_tensor(a: Any, b: Any) -> bool:
    import torch

    return bool(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))


def _source_identity(source: dict[str, Any] | list[dict[str, Any]]) -> dict[str, str]:
    """The source's digest; several sources' is that of their ``"<digest>  <name>"``
    listing sorted by name (what the output's metadata records)."""
    if not isinstance(source, list):
        return {k: source[k] for k in ("sha256", "blake3") if source.get(k)}
    import hashlib

    for kind in ("sha256", "blake3"):
        if source and all(part.get(kind) for part in source):
            parts = sorted(source, key=lambda p: str(p["name"]))
            listing = "".join(f"{p[kind]}  {p['name']}\n" for p in parts).encode()
            if kind == "sha256":
                return {kind: hashlib.sha256(listing).hexdigest()}
            import blake3

            return {kind: blake3.blake3(listing).hexdigest()}
    return {}
