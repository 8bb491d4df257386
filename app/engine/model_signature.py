"""The OpenSSF Model Signing format (``model_signing`` 1.x, PyPI ``model-signing``), written
without that library: a Sigstore bundle (v0.3, public-key mode, no transparency log) holding
a DSSE envelope over an in-toto statement of predicate ``https://model_signing/signature/v1.0``.

The statement lists every file of the model with its sha256 (``resources``; a single-file
model is the one resource ``"."``), and its subject digest is the sha256 of those digests'
bytes in name order; the serialization section (``files``, sha256, no symlinks, the ignored
paths) tells the verifier how to recompute them. ``model_signing verify key MODEL
--signature model.sig --public_key KEY.pub`` then checks it, offline. Its key mode takes
elliptic-curve keys (P-256, P-384, P-521) only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from app.engine.attest import PAYLOAD_TYPE, STATEMENT_TYPE, pae
from app.engine.errors import GraftError
from app.engine.readers import sha256_file

__all__ = ["BUNDLE_MEDIA_TYPE", "MODEL_SIG", "PREDICATE", "model_signature", "signature_path"]

MODEL_SIG = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PREDICATE = "https://model_signing/signature/v1.0"
# What model_signing ignores by default (its --ignore-git-paths), plus the signature itself.
_IGNORED = [".git", ".gitattributes", ".github", ".gitignore"]


def signature_path(output: Path) -> Path:
    """``model.sig``: beside a single output file, inside an output folder."""
    return output / MODEL_SIG if output.is_dir() else output.with_name(MODEL_SIG)


def _resources(output: Path) -> list[dict[str, str]]:
    if not output.is_dir():
        return [{"name": ".", "algorithm": "sha256", "digest": sha256_file(output)}]
    files = sorted(
        (p.relative_to(output).as_posix(), p)
        for p in output.rglob("*")
        if p.is_file() and p.relative_to(output).parts[0] not in (*_IGNORED, MODEL_SIG)
    )
    return [{"name": n, "algorithm": "sha256", "digest": sha256_file(p)} for n, p in files]


def model_signature(output: Path, private_key_pem: bytes) -> dict[str, Any]:
    """The Sigstore bundle that signs ``output`` (a file, or a folder of shards).

    Args:
        output: the model.
        private_key_pem: an unencrypted PEM elliptic-curve private key.

    Returns:
        The bundle, as the JSON document ``model.sig`` holds.

    Raises:
        GraftError: the key is not an elliptic-curve key model_signing verifies.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.key_size not in (256, 384, 521):
        raise GraftError("the OpenSSF model signature needs an ECDSA P-256/384/521 key")
    resources = _resources(output)
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    ignored = [*_IGNORED, MODEL_SIG] if output.is_dir() else list(_IGNORED)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": output.name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": ignored,
            },
            "resources": resources,
        },
    }
    payload = json.dumps(statement, indent=2).encode()
    digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
    signature = key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(digest[key.curve.key_size]))
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": hashlib.sha256(public).hexdigest()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
