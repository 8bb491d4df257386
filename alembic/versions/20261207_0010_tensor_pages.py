"""a checkpoint's tensor index as compact pages of 1,000 tensors (issue 23)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 17:30:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 1000

_rows = sa.table(
    "checkpoint_tensors",
    sa.column("checkpoint_id", sa.String),
    sa.column("position", sa.Integer),
    sa.column("key", sa.Text),
    sa.column("shape", sa.JSON),
    sa.column("dtype", sa.String),
    sa.column("kind", sa.String),
)
_pages = sa.table(
    "checkpoint_tensor_pages",
    sa.column("checkpoint_id", sa.String),
    sa.column("start", sa.Integer),
    sa.column("tensors", sa.Text),
)


def upgrade() -> None:
    op.create_table(
        "checkpoint_tensor_pages",
        sa.Column("checkpoint_id", sa.String(length=32), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("tensors", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoint_tensor_pages_checkpoint_id_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "start", name=op.f("pk_checkpoint_tensor_pages")),
    )
    bind = op.get_bind()
    ids = bind.execute(sa.select(_rows.c.checkpoint_id).distinct()).scalars().all()
    for checkpoint_id in ids:
        rows = bind.execute(
            sa.select(_rows.c.key, _rows.c.shape, _rows.c.dtype, _rows.c.kind)
            .where(_rows.c.checkpoint_id == checkpoint_id)
            .order_by(_rows.c.position)
        ).all()
        tensors = [[r.key, list(r.shape), r.dtype, r.kind] for r in rows]
        pages = [
            {
                "checkpoint_id": checkpoint_id,
                "start": start,
                "tensors": json.dumps(tensors[start : start + _PAGE], separators=(",", ":")),
            }
            for start in range(0, len(tensors), _PAGE)
        ]
        bind.execute(_pages.insert(), pages)
    op.drop_table("checkpoint_tensors")


def downgrade() -> None:
    op.create_table(
        "checkpoint_tensors",
        sa.Column("checkpoint_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("dtype", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoint_tensors_checkpoint_id_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "position", name=op.f("pk_checkpoint_tensors")),
    )
    bind = op.get_bind()
    for page in bind.execute(sa.select(_pages)).all():
        rows = [
            {
                "checkpoint_id": page.checkpoint_id,
                "position": page.start + i,
                "key": key,
                "shape": shape,
                "dtype": dtype,
                "kind": kind,
            }
            for i, (key, shape, dtype, kind) in enumerate(json.loads(page.tensors))
        ]
        bind.execute(_rows.insert(), rows)
    op.drop_table("checkpoint_tensor_pages")
