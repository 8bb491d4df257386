"""secrets at rest: webhook secrets sealed with GRAFT_SECRET_KEY; idempotency scopes

Webhook secrets stored in plain text are sealed (Fernet) in place. Stored idempotent
responses are dropped: older ones may hold a webhook secret (the answer of POST
/v1/webhooks/secret) and do not say which scopes made them. They are a 24-hour cache; a
client that retries one of them runs its request again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import context, op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SECRETS = sa.table("webhook_secrets", sa.column("owner", sa.String), sa.column("secret", sa.Text))


def _box():  # type: ignore[no-untyped-def]
    """The box ``upgrade(database)`` passed, else the one the settings name (alembic CLI)."""
    box = context.config.attributes.get("secret_box")
    if box is None:
        from app.config import get_settings
        from app.db.secret_box import secret_box_for

        box = secret_box_for(get_settings())
    return box


def upgrade() -> None:
    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        # A Fernet token of a whsec_ secret is about 160 characters.
        batch_op.alter_column(
            "secret", existing_type=sa.String(length=128), type_=sa.Text(), nullable=False
        )
    connection = op.get_bind()
    plain = connection.execute(
        sa.select(_SECRETS.c.owner, _SECRETS.c.secret).where(_SECRETS.c.secret.like("whsec_%"))
    ).all()
    if plain:
        box = _box()
        for owner, secret in plain:
            connection.execute(
                _SECRETS.update().where(_SECRETS.c.owner == owner).values(secret=box.seal(secret))
            )
    op.execute("DELETE FROM idempotency_keys")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scopes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_column("scopes")
    connection = op.get_bind()
    sealed = connection.execute(sa.select(_SECRETS.c.owner, _SECRETS.c.secret)).all()
    box = _box() if sealed else None
    for owner, token in sealed:
        if not token.startswith("whsec_"):
            connection.execute(
                _SECRETS.update().where(_SECRETS.c.owner == owner).values(secret=box.open(token))
            )
    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.Text(), type_=sa.String(length=128), nullable=False
        )
