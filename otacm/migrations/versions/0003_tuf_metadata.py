"""TUF repositories: one row per repository (the writers' lock) and every signed metadata version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuf_repositories",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tuf_repositories")),
    )
    op.create_table(
        "tuf_metadata",
        sa.Column("repository", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository"],
            ["tuf_repositories.name"],
            name=op.f("fk_tuf_metadata_repository_tuf_repositories"),
        ),
        sa.PrimaryKeyConstraint("repository", "role", "version", name=op.f("pk_tuf_metadata")),
    )


def downgrade() -> None:
    op.drop_table("tuf_metadata")
    op.drop_table("tuf_repositories")
