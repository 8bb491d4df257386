"""sources by reference, registry results, pipelines, processed MLflow deliveries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("trigger_model", sa.String(length=255), nullable=False),
        sa.Column("trigger_on", sa.String(length=255), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipelines")),
        sa.UniqueConstraint("owner", "name", name=op.f("uq_pipelines_owner")),
    )
    op.create_index(op.f("ix_pipelines_trigger_model"), "pipelines", ["trigger_model"])
    op.create_table(
        "mlflow_deliveries",
        sa.Column("delivery_id", sa.String(length=128), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("jobs", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_mlflow_deliveries")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_ref", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("register", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("result", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("pipeline_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_pipeline_id"), ["pipeline_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_pipeline_id_pipelines"),
            "pipelines",
            ["pipeline_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_pipeline_id_pipelines"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_pipeline_id"))
        batch_op.drop_column("pipeline_id")
        batch_op.drop_column("result")
        batch_op.drop_column("register")
        batch_op.drop_column("source_ref")
    op.drop_table("mlflow_deliveries")
    op.drop_index(op.f("ix_pipelines_trigger_model"), table_name="pipelines")
    op.drop_table("pipelines")
