"""``graft verify`` and ``graft replay`` (SPEC §3.3), and the attestation ``graft convert``
writes beside its output (``--sign-key`` / ``GRAFT_SIGNING_KEY``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["SignKeyOpt", "attest", "register"]

SignKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--sign-key",
        envvar="GRAFT_SIGNING_KEY",
        help="A PEM private key (ECDSA P-256 or Ed25519), or its path: the attestation is "
        "signed (DSSE).",
    ),
]


def _pem(value: str, option: str) -> bytes:
    """A PEM given inline or as a file's path."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise typer.BadParameter(f"{option}: {value} is not a PEM file")
    return path.read_bytes()


def attest(
    weights: Path,
    report: dict[str, Any],
    recipe: Path | None,
    sign_key: str | None,
    file_sha256: Mapping[Path, str] | None = None,
) -> None:
    """Write the attestation of a finished conversion beside it (``<output>.intoto.json``);
    ``file_sha256``: the digests of files the conversion hashed as it wrote them."""
    from app.engine.recipe import load_recipe
    from app.services.attestation import attest_output

    key = _pem(sign_key, "--sign-key") if sign_key else None
    as_json = load_recipe(recipe).model_dump(mode="json", by_alias=True)
    attest_output(weights, report, recipe=as_json, signing_key=key, file_sha256=file_sha256)


def verify(
    output: Annotated[Path, typer.Argument(help="The output file (or folder of shards).")],
    source: Annotated[
        Path | None,
        typer.Option("--source", help="Replay the conversion from it and prove byte identity."),
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="The signer's PEM public key.")
    ] = None,
    target: Annotated[
        Path | None, typer.Option("--target", help="The template, for a template target.")
    ] = None,
) -> None:
    """Check OUTPUT's files, tensors and signature against OUTPUT.intoto.json.

    Exit 0 verified, 1 a mismatch (named), 2 bad input.
    """
    from app.services.attestation import verify_output

    key = public_key.read_bytes() if public_key is not None else None
    result = verify_output(output, public_key=key, source=source, template=target)
    for finding in result.findings:
        typer.echo(f"graft: MISMATCH: {finding}", err=True)
    if result.findings:
        raise typer.Exit(1)
    checks = ["files", "tensors", "statement"]
    if result.signed_by:
        checks.append(f"signature (key {result.signed_by[:16]}…)")
    if result.replayed:
        checks.append("replay from the source: byte-identical")
    typer.echo(f"verified {output}: {', '.join(checks)}")


def replay(
    output: Annotated[Path, typer.Argument(help="The output to rebuild.")],
    source: Annotated[Path, typer.Option("--source", help="The source it was made from.")],
    out: Annotated[
        Path | None, typer.Option("-o", "--output", help="Where to write the rebuild.")
    ] = None,
    target: Annotated[
        Path | None, typer.Option("--target", help="The template, for a template target.")
    ] = None,
) -> None:
    """Rebuild OUTPUT from its own metadata and SOURCE, and prove it byte for byte.

    Exit 0 identical, 1 different (named), 2 bad input.
    """
    import tempfile

    from app.services.attestation import compare_outputs, replay_output

    with tempfile.TemporaryDirectory() as tmp:
        written = replay_output(output, source, out=out or Path(tmp) / output.name, template=target)
        findings = compare_outputs(output, written)
    for finding in findings:
        typer.echo(f"graft: MISMATCH: {finding}", err=True)
    if findings:
        raise typer.Exit(1)
    typer.echo(f"replayed {output}: byte-identical" + (f", written to {out}" if out else ""))


def register(app: typer.Typer) -> None:
    """Add ``verify`` and ``replay`` to the ``graft`` command."""
    app.command()(verify)
    app.command()(replay)
