"""Alembic environment: runs against the engine handed over by `otacm.db.upgrade`."""

from alembic import context
from sqlalchemy import Engine

import otacm.models  # noqa: F401  (registers every table on the metadata)
from otacm.db import Base

engine: Engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
