"""The migrations build exactly the schema the models describe, on every engine."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

import otacm.models  # noqa: F401  (every table on the metadata)
from otacm.db import Base, current_revision, head_revision


def test_migrated_database_matches_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
