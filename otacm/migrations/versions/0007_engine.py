"""The rollout engine: when a wave met its success threshold, when a campaign finished.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaign_waves", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("threshold_met_at", sa.DateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("finished_at")

    with op.batch_alter_table("campaign_waves", schema=None) as batch_op:
        batch_op.drop_column("threshold_met_at")
