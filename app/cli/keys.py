"""``graft keys create|list|revoke``: API keys."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from app.cli.help_format import GraftCommand, GraftGroup
from app.cli.options import JsonOpt

__all__ = ["keys_cli"]

keys_cli = typer.Typer(
    cls=GraftGroup,
    help="API keys: once one exists, every request needs `Authorization: Bearer <key>`.",
    no_args_is_help=True,
)


def _keys_database() -> Any:
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.session import Database

    settings = get_settings()
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    upgrade(database)
    return database


@keys_cli.command(cls=GraftCommand, name="create")
def keys_create(
    owner: Annotated[
        str, typer.Option(help="Who the key's checkpoints and jobs belong to.")
    ] = "local",
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="read, write or admin (repeatable; default read+write)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A note to recognise the key by.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a key and print it. It is stored hashed and cannot be shown again."""
    from app.services.auth import create_key

    database = _keys_database()
    try:
        with database.transaction() as session:
            key, token = create_key(
                session, owner=owner, scopes=scope or ["read", "write"], name=name
            )
            scopes: list[str] = list(key.scopes)
            info = {"id": key.id, "owner": key.owner, "scopes": scopes, "token": token}
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        database.dispose()
    if json_:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"key {key.id} for owner {key.owner!r}, scopes {','.join(scopes)}")
    typer.echo(token)
    typer.echo("Store it now: only its hash is kept, it cannot be shown again.", err=True)


@keys_cli.command(cls=GraftCommand, name="list")
def keys_list(json_: JsonOpt = False) -> None:
    """Every key: id, owner, scopes, created, revoked (never the secret)."""
    from app.services.auth import list_keys

    database = _keys_database()
    try:
        with database.transaction(write=False) as session:
            rows: list[dict[str, Any]] = [
                {
                    "id": k.id,
                    "owner": k.owner,
                    "name": k.name,
                    "scopes": k.scopes,
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in list_keys(session)
            ]
    finally:
        database.dispose()
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        typer.echo(
            f"{row['id']}  {row['owner']:<16} {','.join(row['scopes']):<16} "
            f"{row['created_at']}  {state}" + (f"  ({row['name']})" if row["name"] else "")
        )


@keys_cli.command(cls=GraftCommand, name="revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (or token).")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from app.services.auth import revoke_key

    database = _keys_database()
    try:
        with database.transaction() as session:
            revoked = revoke_key(session, key_id)
    finally:
        database.dispose()
    if not revoked:
        typer.echo(f"graft: error: no active key {key_id!r}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")
