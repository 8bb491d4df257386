"""fencing tokens: each claim of a job increments its lease token

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 17:20:00.000000

(Numbered 0009: 0008 is taken by secrets at rest on a sibling branch; when both are merged,
this one's ``down_revision`` becomes ``"0008"``.)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease_token", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("lease_token")
