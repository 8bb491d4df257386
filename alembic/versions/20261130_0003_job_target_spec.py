"""jobs store their target spec whole

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:00:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target", sa.JSON(), nullable=True))
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("target", sa.JSON),
        sa.column("target_kind", sa.String),
        sa.column("target_spec", sa.JSON),
        sa.column("target_checkpoint_id", sa.String),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(jobs.c.id, jobs.c.target_kind, jobs.c.target_spec, jobs.c.target_checkpoint_id)
    ).all()
    for job_id, kind, spec, checkpoint_id in rows:
        if isinstance(spec, str):
            spec = json.loads(spec)
        if kind == "checkpoint":
            target = {"checkpoint": checkpoint_id or ""}
        elif kind == "skeleton":
            target = {"skeleton": spec or {}}
        else:
            target = {"architecture": (spec or {}).get("architecture", ""),
                      "kwargs": (spec or {}).get("kwargs", {})}  # fmt: skip
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(target=target))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("target", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("target_spec")
        batch_op.drop_column("target_kind")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("target_spec", sa.JSON(), nullable=True))
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("target", sa.JSON),
        sa.column("target_kind", sa.String),
        sa.column("target_spec", sa.JSON),
    )
    connection = op.get_bind()
    for job_id, target in connection.execute(sa.select(jobs.c.id, jobs.c.target)).all():
        if isinstance(target, str):
            target = json.loads(target)
        kind = next(k for k in ("checkpoint", "skeleton", "architecture") if k in target)
        spec = None if kind == "checkpoint" else target.get("skeleton", target)
        connection.execute(
            jobs.update().where(jobs.c.id == job_id).values(target_kind=kind, target_spec=spec)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("target_kind", existing_type=sa.String(length=16), nullable=False)
        batch_op.drop_column("target")
