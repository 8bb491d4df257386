"""Attestations (SPEC §3.3): an in-toto Statement v1 about an output, optionally wrapped in a
DSSE envelope signed with ECDSA P-256 or Ed25519, and the checks that read it back.

Everything here is a pure function of its arguments: the caller (CLI, service) reads the
signing key from wherever it keeps it and passes the PEM bytes. Nothing needs a network.

- :func:`build_statement` describes the output files (sha256 each) and how they were made:
  source identity, target, recipe (canonical JSON and its sha256), seed, report digest and
  summary, verification (parity included), every tensor's digest, Graft's and torch's
  versions.
- :func:`sign` wraps it in a DSSE envelope (``payloadType`` in-toto's, the signature over
  DSSE's pre-authentication encoding); :func:`open_attestation` checks it and returns the
  statement, naming a wrong key apart from a tampered statement (the envelope carries the
  signing key's id).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.engine.errors import GraftError
from app.engine.provenance import OutputMetadata, canonical_json
from app.engine.readers import sha256_files

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "AttestationError",
    "attestation_path",
    "build_statement",
    "key_id",
    "open_attestation",
    "pae",
    "sign",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:graft:transplant:v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class AttestationError(GraftError):
    """An attestation that does not hold: a wrong key, a tampered statement or file."""

    type = "attestation-mismatch"
    exit_code = 1


def attestation_path(output: Path) -> Path:
    """``<output>.intoto.json``, beside a file output or beside a folder of shards."""
    return output.with_name(output.name + ".intoto.json")


def build_statement(
    files: Sequence[Path],
    *,
    base: Path,
    report: dict[str, Any],
    metadata: OutputMetadata,
    versions: dict[str, str],
    known_sha256: Mapping[Path, str] | None = None,
) -> dict[str, Any]:
    """The in-toto Statement v1 of one conversion.

    Args:
        files: the output files (a single file, or every shard and the index).
        base: the folder subject names are relative to.
        report: the conversion's ``graft.report/v1``.
        metadata: what the output itself records (recipe, target, source identity).
        versions: ``{"graft": ..., "torch": ...}``.
        known_sha256: the sha256 of files the conversion hashed as it wrote them (see
            ``Execution.file_sha256``); the other files are read and hashed here.

    Returns:
        The statement, as a JSON document.
    """
    known = dict(known_sha256 or {})
    hashed = iter(sha256_files([p for p in files if p not in known]))
    subject = [
        {"name": path.relative_to(base).as_posix(), "digest": {"sha256": digest}}
        for path in files
        for digest in [known[path] if path in known else next(hashed)]
    ]
    output = report.get("output") or {}
    predicate = {
        "source": {**metadata.source, "format": _formats(report["source"])},
        "target": metadata.target,
        "recipe": metadata.recipe,
        "recipe_sha256": metadata.recipe_sha256,
        "seed": metadata.recipe.get("seed", 0),
        "report": {"sha256": output.get("report_sha256"), "summary": report["summary"]},
        "verification": report.get("verification"),
        "tensors": {e["target"]: e["digest"] for e in report["entries"] if e.get("digest")},
        "versions": versions,
    }
    return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PREDICATE_TYPE,
            "predicate": predicate}  # fmt: skip


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise GraftError(f"the signing key is not an unencrypted PEM private key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise GraftError("the signing key must be ECDSA P-256 or Ed25519")


def _public_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise GraftError(f"the public key is not a PEM public key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return key
    raise GraftError("the public key must be ECDSA P-256 or Ed25519")


def key_id(public_key: Any) -> str:
    """The sha256 of the key's SubjectPublicKeyInfo (DER): the envelope's ``keyid``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def sign(statement: dict[str, Any], private_key_pem: bytes) -> dict[str, Any]:
    """Wrap ``statement`` in a DSSE envelope signed with the key.

    Args:
        statement: the in-toto statement.
        private_key_pem: an unencrypted PEM private key, ECDSA P-256 or Ed25519.

    Returns:
        ``{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig" (base64)}]}``.

    Raises:
        GraftError: the key is unreadable or of another kind (exit 2).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = _private_key(private_key_pem)
    payload = canonical_json(statement)
    message = pae(PAYLOAD_TYPE, payload)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        signature = key.sign(message)
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode()}
        ],
    }


def open_attestation(
    document: dict[str, Any], public_key_pem: bytes | None
) -> tuple[dict[str, Any], str | None]:
    """The statement an attestation holds, its signature checked when a key is given.

    Args:
        document: a statement, or a DSSE envelope holding one.
        public_key_pem: the signer's PEM public key; ``None`` checks no signature.

    Returns:
        ``(statement, keyid)``: the key id that verified it, ``None`` when none did.

    Raises:
        AttestationError: a wrong key, a tampered statement, or a key given for an unsigned
            statement (exit 1).
        GraftError: not an attestation, or an unreadable key (exit 2).
    """
    if "payload" not in document:
        if public_key_pem is not None:
            raise AttestationError("the attestation is not signed: there is no signature to check")
        return _statement(document), None
    try:
        payload = base64.b64decode(document["payload"], validate=True)
        signatures = list(document["signatures"])
        statement = _statement(json.loads(payload))
    except (ValueError, KeyError, TypeError):
        raise GraftError("the attestation is not a DSSE envelope of an in-toto statement") from None
    if public_key_pem is None:
        return statement, None
    key = _public_key(public_key_pem)
    wanted = key_id(key)
    mine = [s for s in signatures if s.get("keyid") == wanted]
    if not mine:
        ids = ", ".join(str(s.get("keyid"))[:16] for s in signatures)
        raise AttestationError(
            f"wrong key: the attestation is signed by key {ids}…, not by this key ({wanted[:16]}…)"
        )
    message = pae(str(document.get("payloadType")), payload)
    if not any(_verifies(key, message, s.get("sig", "")) for s in mine):
        raise AttestationError(
            "the statement was tampered with: the signature by this key does not match it"
        )
    return statement, wanted


def _verifies(key: Any, message: bytes, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = base64.b64decode(signature, validate=True)
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, message, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(raw, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _statement(value: Any) -> dict[str, Any]:
    if (
        not isinstance(value, dict)
        or value.get("_type") != STATEMENT_TYPE
        or value.get("predicateType") != PREDICATE_TYPE
        or not isinstance(value.get("subject"), list)
    ):
        raise GraftError(f"not an in-toto Statement v1 with predicate {PREDICATE_TYPE}")
    return value


def _formats(source: dict[str, Any] | list[dict[str, Any]]) -> str | dict[str, str]:
    """The source's format; several sources' by name."""
    if isinstance(source, list):
        return {str(part["name"]): str(part["format"]) for part in source}
    return str(source["format"])
