"""Fleet registry: vehicles, ECUs, ECU history and fleet imports.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "id_allocations",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("next_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_id_allocations")),
    )
    op.create_table(
        "fleet_imports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source_name", sa.String(length=500), nullable=False),
        sa.Column("format", sa.String(length=10), nullable=True),
        sa.Column("compressed", sa.Boolean(), nullable=False),
        sa.Column("strict", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "counts", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_imports")),
    )
    op.create_table(
        "fleet_import_rejections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("vin", sa.String(length=64), nullable=True),
        sa.Column("field", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["fleet_imports.id"],
            name=op.f("fk_fleet_import_rejections_import_id_fleet_imports"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_import_rejections")),
    )
    with op.batch_alter_table("fleet_import_rejections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fleet_import_rejections_import_id"), ["import_id"], unique=False
        )

    op.create_table(
        "vehicles",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("engine_number", sa.String(length=64), nullable=False),
        sa.Column("chassis_number", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("model_year", sa.Integer(), nullable=False),
        sa.Column("fuel_type", sa.String(length=20), nullable=False),
        sa.Column("region", sa.String(length=20), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("manufactured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column(
            "attributes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("vehicle_public_key", sa.Text(), nullable=True),
        sa.Column("rxswin", sa.Text(), nullable=True),
        sa.Column("import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["fleet_imports.id"], name=op.f("fk_vehicles_import_id_fleet_imports")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vehicles")),
        sa.UniqueConstraint("vin", name=op.f("uq_vehicles_vin")),
    )
    with op.batch_alter_table("vehicles", schema=None) as batch_op:
        batch_op.create_index("ix_vehicles_fuel_type", ["fuel_type"], unique=False)
        batch_op.create_index("ix_vehicles_model_year", ["model", "model_year"], unique=False)
        batch_op.create_index("ix_vehicles_region_country", ["region", "country"], unique=False)

    op.create_table(
        "ecus",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "vehicle_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("ecu_type", sa.String(length=32), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("hardware_part_number", sa.String(length=64), nullable=False),
        sa.Column("hardware_version", sa.String(length=32), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("software_part_number", sa.String(length=64), nullable=False),
        sa.Column("software_version", sa.String(length=64), nullable=False),
        sa.Column("calibration_id", sa.String(length=64), nullable=True),
        sa.Column("software_source", sa.String(length=16), nullable=False),
        sa.Column("software_observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ecus")),
        sa.UniqueConstraint("serial", name=op.f("uq_ecus_serial")),
    )
    with op.batch_alter_table("ecus", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ecus_type_software", ["ecu_type", "software_version"], unique=False
        )
        batch_op.create_index(
            "ix_ecus_type_hardware",
            ["ecu_type", "hardware_part_number", "hardware_version"],
            unique=False,
        )
        batch_op.create_index("ix_ecus_vehicle_id", ["vehicle_id"], unique=False)

    op.create_table(
        "ecu_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ecu_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column(
            "vehicle_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("hardware_part_number", sa.String(length=64), nullable=False),
        sa.Column("hardware_version", sa.String(length=32), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("software_part_number", sa.String(length=64), nullable=False),
        sa.Column("software_version", sa.String(length=64), nullable=False),
        sa.Column("calibration_id", sa.String(length=64), nullable=True),
        sa.Column("software_source", sa.String(length=16), nullable=False),
        sa.Column("software_observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "changed_by_import_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column(
            "changed_to_vehicle_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["changed_by_import_id"],
            ["fleet_imports.id"],
            name=op.f("fk_ecu_history_changed_by_import_id_fleet_imports"),
        ),
        sa.ForeignKeyConstraint(
            ["changed_to_vehicle_id"],
            ["vehicles.id"],
            name=op.f("fk_ecu_history_changed_to_vehicle_id_vehicles"),
        ),
        sa.ForeignKeyConstraint(["ecu_id"], ["ecus.id"], name=op.f("fk_ecu_history_ecu_id_ecus")),
        sa.ForeignKeyConstraint(
            ["import_id"], ["fleet_imports.id"], name=op.f("fk_ecu_history_import_id_fleet_imports")
        ),
        sa.ForeignKeyConstraint(
            ["vehicle_id"], ["vehicles.id"], name=op.f("fk_ecu_history_vehicle_id_vehicles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ecu_history")),
    )
    with op.batch_alter_table("ecu_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ecu_history_ecu_id"), ["ecu_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ecu_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ecu_history_ecu_id"))

    op.drop_table("ecu_history")
    with op.batch_alter_table("ecus", schema=None) as batch_op:
        batch_op.drop_index("ix_ecus_vehicle_id")
        batch_op.drop_index("ix_ecus_type_hardware")
        batch_op.drop_index("ix_ecus_type_software")

    op.drop_table("ecus")
    with op.batch_alter_table("vehicles", schema=None) as batch_op:
        batch_op.drop_index("ix_vehicles_region_country")
        batch_op.drop_index("ix_vehicles_model_year")
        batch_op.drop_index("ix_vehicles_fuel_type")

    op.drop_table("vehicles")
    with op.batch_alter_table("fleet_import_rejections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fleet_import_rejections_import_id"))

    op.drop_table("fleet_import_rejections")
    op.drop_table("fleet_imports")
    op.drop_table("id_allocations")
