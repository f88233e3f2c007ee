"""calibrations learn the camera's focal length from a reference at a known distance

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calibrations") as batch:
        batch.add_column(sa.Column("focal_px", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reference_distance_mm", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calibrations") as batch:
        batch.drop_column("reference_distance_mm")
        batch.drop_column("focal_px")
