"""the sorter link: outbox of MQTT messages, per-stream sequence numbers, line alerts in force

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 06:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stream", sa.String(length=250), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("retain", sa.Boolean(), nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=True),
        sa.Column("fruit_index", sa.Integer(), nullable=True),
        sa.Column("fruit_row_id", sa.Integer(), nullable=True),
        sa.Column("outlet", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ejected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ejected_outlet", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_id", "fruit_index", name="uq_outbox_result_fruit"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_pending", ["sent_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_ejected_at"), ["ejected_at"], unique=False)
    op.create_table(
        "sorter_streams",
        sa.Column("stream", sa.String(length=250), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("stream"),
    )
    op.create_table(
        "line_alerts",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("line", sa.String(length=100), nullable=False),
        sa.Column("alert", sa.JSON(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("line_alerts")
    op.drop_table("sorter_streams")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_ejected_at"))
        batch_op.drop_index("ix_outbox_pending")
    op.drop_table("outbox")
