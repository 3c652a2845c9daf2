"""The deployment ledger (history and tallies), versions per ECU, dynamic joins.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "deployment_events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("deployment_id", _ID, nullable=False),
        sa.Column("campaign_id", _ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=24), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_events")),
    )
    op.create_index("ix_deployment_events_deployment", "deployment_events", ["deployment_id", "id"])
    op.create_table(
        "deployment_tallies",
        sa.Column("id", _ID, nullable=False),
        sa.Column("campaign_id", _ID, nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_tallies")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deployment_tallies_campaign", "deployment_tallies", ["campaign_id", "id"])
    # Launched campaigns get their tallies from their deployments as they are now.
    op.execute(
        "INSERT INTO deployment_tallies (campaign_id, wave, state, failure_code, delta) "
        "SELECT campaign_id, wave, state, failure_code, count(*) FROM deployments "
        "GROUP BY campaign_id, wave, state, failure_code"
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "versions",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.drop_index("ix_deployments_campaign_state")
        batch_op.create_index(
            "ix_deployments_campaign_state", ["campaign_id", "state", "state_entered_at"]
        )
        batch_op.create_index(
            "ix_deployments_retry_planned",
            ["campaign_id", "next_attempt_at"],
            postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
            sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
        )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("tallies_seen", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("tallies_seen")
        batch_op.drop_column("wake_at")
        batch_op.drop_column("joined_at")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_deployments_retry_planned")
        batch_op.drop_index("ix_deployments_campaign_state")
        batch_op.create_index("ix_deployments_campaign_state", ["campaign_id", "state"])
        batch_op.drop_column("versions")
    op.drop_index("ix_deployment_tallies_campaign", table_name="deployment_tallies")
    op.drop_table("deployment_tallies")
    op.drop_index("ix_deployment_events_deployment", table_name="deployment_events")
    op.drop_table("deployment_events")
