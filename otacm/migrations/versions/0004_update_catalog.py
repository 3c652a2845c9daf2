"""Update catalog: software updates, their artifacts and release counters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_counters",
        sa.Column("ecu_type", sa.String(length=32), nullable=False),
        sa.Column("hardware_part_number", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "ecu_type", "hardware_part_number", name=op.f("pk_release_counters")
        ),
    )
    op.create_table(
        "software_updates",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column(
            "version_sort",
            sa.String(length=600).with_variant(sa.String(length=600, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("ecu_type", sa.String(length=32), nullable=False),
        sa.Column("software_part_number", sa.String(length=64), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("confidential", sa.Boolean(), nullable=False),
        sa.Column(
            "compatible_models",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("model_year_min", sa.Integer(), nullable=True),
        sa.Column("model_year_max", sa.Integer(), nullable=True),
        sa.Column(
            "fuel_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "hardware_part_numbers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "hardware_versions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "applicable_versions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("applicable_version_min", sa.String(length=100), nullable=True),
        sa.Column("applicable_version_max", sa.String(length=100), nullable=True),
        sa.Column(
            "dependencies",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("release_notes", sa.Text(), nullable=False),
        sa.Column("support_contact", sa.String(length=200), nullable=True),
        sa.Column("documentation_url", sa.String(length=2000), nullable=True),
        sa.Column("end_of_support", sa.Date(), nullable=True),
        sa.Column("estimated_install_minutes", sa.Integer(), nullable=True),
        sa.Column(
            "preconditions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("install_order", sa.Integer(), nullable=False),
        sa.Column("rollback_version", sa.String(length=100), nullable=True),
        sa.Column(
            "regulatory",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=True),
        sa.Column("release_counter", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(length=200), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_by", sa.String(length=200), nullable=True),
        sa.Column("withdrawal_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_software_updates")),
        sa.UniqueConstraint(
            "ecu_type", "software_part_number", "version", name=op.f("uq_software_updates_ecu_type")
        ),
    )
    with op.batch_alter_table("software_updates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_software_updates_catalog", ["ecu_type", "version_sort"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_software_updates_state"), ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_software_updates_version_sort"), ["version_sort"], unique=False
        )

    op.create_table(
        "update_artifacts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "update_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("plaintext_length", sa.BigInteger(), nullable=False),
        sa.Column("plaintext_sha256", sa.String(length=64), nullable=False),
        sa.Column("encrypted", sa.Boolean(), nullable=False),
        sa.Column("storage_key", sa.String(length=300), nullable=False),
        sa.Column("target_path", sa.String(length=600), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["update_id"],
            ["software_updates.id"],
            name=op.f("fk_update_artifacts_update_id_software_updates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_update_artifacts")),
        sa.UniqueConstraint("target_path", name=op.f("uq_update_artifacts_target_path")),
        sa.UniqueConstraint("update_id", "filename", name=op.f("uq_update_artifacts_update_id")),
    )
    with op.batch_alter_table("update_artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_update_artifacts_sha256"), ["sha256"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_update_artifacts_update_id"), ["update_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("update_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_update_artifacts_update_id"))
        batch_op.drop_index(batch_op.f("ix_update_artifacts_sha256"))

    op.drop_table("update_artifacts")
    with op.batch_alter_table("software_updates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_software_updates_version_sort"))
        batch_op.drop_index(batch_op.f("ix_software_updates_state"))
        batch_op.drop_index("ix_software_updates_catalog")

    op.drop_table("software_updates")
    op.drop_table("release_counters")
