"""shadow results: a candidate model's opinion beside the serving model's

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=False),
        sa.Column("fruit_index", sa.Integer(), nullable=False),
        sa.Column("shadow_model_id", sa.String(length=200), nullable=False),
        sa.Column("serving_model_id", sa.String(length=200), nullable=False),
        sa.Column("shadow_label", sa.String(length=50), nullable=False),
        sa.Column("shadow_score", sa.Float(), nullable=False),
        sa.Column("serving_label", sa.String(length=50), nullable=True),
        sa.Column("serving_score", sa.Float(), nullable=True),
        sa.Column("disagree", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("shadow_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shadow_results_result_id"), ["result_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_shadow_results_shadow_model_id"), ["shadow_model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_shadow_results_disagree"), ["disagree"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("shadow_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shadow_results_disagree"))
        batch_op.drop_index(batch_op.f("ix_shadow_results_shadow_model_id"))
        batch_op.drop_index(batch_op.f("ix_shadow_results_result_id"))
    op.drop_table("shadow_results")
