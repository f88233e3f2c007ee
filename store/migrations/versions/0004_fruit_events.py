"""fruit events: each fruit's journey from camera to outlet

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 09:50:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fruit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fruit_row_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=False),
        sa.Column("stage", sa.String(length=30), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["fruit_row_id"],
            ["fruits.id"],
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fruit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fruit_events_fruit_row_id"), ["fruit_row_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_fruit_events_result_id"), ["result_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fruit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fruit_events_result_id"))
        batch_op.drop_index(batch_op.f("ix_fruit_events_fruit_row_id"))
    op.drop_table("fruit_events")
