"""The vehicle side: credentials, manifest state, security events, event receipts, notices.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "vehicle_credentials",
        sa.Column("id", _ID, nullable=False),
        sa.Column("vehicle_id", _ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_by", sa.String(length=200), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vehicle_credentials")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_vehicle_credentials_token_hash")),
    )
    op.create_index("ix_vehicle_credentials_vehicle", "vehicle_credentials", ["vehicle_id"])
    op.create_table(
        "vehicle_ota_state",
        sa.Column("vehicle_id", _ID, nullable=False),
        sa.Column("signing_public_key", sa.Text(), nullable=True),
        sa.Column("report_counter", sa.BigInteger(), nullable=True),
        sa.Column("manifest_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("vehicle_id", name=op.f("pk_vehicle_ota_state")),
    )
    op.create_table(
        "vehicle_security_events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("vehicle_id", _ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vehicle_security_events")),
    )
    op.create_index(
        "ix_vehicle_security_events_vehicle", "vehicle_security_events", ["vehicle_id", "id"]
    )
    op.create_table(
        "vehicle_event_receipts",
        sa.Column("deployment_id", _ID, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=24), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "deployment_id", "event_id", name=op.f("pk_vehicle_event_receipts")
        ),
    )
    op.create_table(
        "customer_notices",
        sa.Column("id", _ID, nullable=False),
        sa.Column("deployment_id", _ID, nullable=False),
        sa.Column("vehicle_id", _ID, nullable=False),
        sa.Column("campaign_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_notices")),
    )
    op.create_index("ix_customer_notices_deployment", "customer_notices", ["deployment_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_customer_notices_deployment", table_name="customer_notices")
    op.drop_table("customer_notices")
    op.drop_table("vehicle_event_receipts")
    op.drop_index("ix_vehicle_security_events_vehicle", table_name="vehicle_security_events")
    op.drop_table("vehicle_security_events")
    op.drop_table("vehicle_ota_state")
    op.drop_index("ix_vehicle_credentials_vehicle", table_name="vehicle_credentials")
    op.drop_table("vehicle_credentials")
