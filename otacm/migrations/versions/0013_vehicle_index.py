"""Indexes for the idle-poll index's refresh: credentials by the time they were issued or
revoked (`otacm/vehicle_api/idle.py`).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_vehicle_credentials_issued", "vehicle_credentials", ["issued_at"])
    op.create_index(
        "ix_vehicle_credentials_revoked",
        "vehicle_credentials",
        ["revoked_at"],
        postgresql_where=sa.text("revoked_at IS NOT NULL"),
        sqlite_where=sa.text("revoked_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_vehicle_credentials_revoked", table_name="vehicle_credentials")
    op.drop_index("ix_vehicle_credentials_issued", table_name="vehicle_credentials")
