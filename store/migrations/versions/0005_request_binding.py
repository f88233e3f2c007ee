"""results: which API key made each result, and the hash of the request its idempotency key stands for

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 06:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_results_api_key_id"), ["api_key_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_results_api_key_id"))
        batch_op.drop_column("request_sha256")
        batch_op.drop_column("api_key_id")
