"""The DSSE and in-toto pieces against their specifications."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from app.engine.attest import AttestationError, open_attestation, pae, sign
from app.engine.errors import GraftError

STATEMENT = {"_type": "https://in-toto.io/Statement/v1", "subject": [],
             "predicateType": "urn:graft:transplant:v1", "predicate": {"seed": 0}}  # fmt: skip


def test_pae_is_the_dsse_spec_s_example() -> None:
    # https://github.com/secure-systems-lab/dsse/blob/master/protocol.md (test vector)
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_an_envelope_opens_with_its_key_only() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    envelope = sign(STATEMENT, pem)
    assert json.loads(base64.b64decode(envelope["payload"])) == STATEMENT
    statement, keyid = open_attestation(envelope, public)
    assert statement == STATEMENT and keyid == envelope["signatures"][0]["keyid"]
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(AttestationError, match=r"^wrong key: "):
        open_attestation(
            envelope, other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
    with pytest.raises(AttestationError, match=r"^the attestation is not signed"):
        open_attestation(STATEMENT, public)
    with pytest.raises(GraftError, match=r"^not an in-toto Statement v1"):
        open_attestation({"_type": "x"}, None)
