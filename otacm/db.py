"""Database access: the engine, sessions, the declarative base and schema migrations.

SQLite is the embedded default and PostgreSQL the production store; both run the same Alembic
migrations. Bulk paths pick each engine's fast path through `is_postgresql`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from otacm.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine.

    SQLite has no time zone type, so values are stored as naive UTC and made aware on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; otacm stores only timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def sqlite_timestamp(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores, for raw bulk statements."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def is_postgresql(engine_or_dialect: Engine | Dialect) -> bool:
    dialect = (
        engine_or_dialect.dialect if isinstance(engine_or_dialect, Engine) else engine_or_dialect
    )
    return dialect.name == "postgresql"


def _normalise_url(url: str) -> str:
    # Plain postgresql:// URLs mean psycopg 3, the only PostgreSQL driver otacm ships with.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


# SQLite page cache per connection, in KiB.
SQLITE_CACHE_KIB = 65_536
SQLITE_BUSY_TIMEOUT_S = 30


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    # Large imports sort and index on disk, not in RAM.
    cursor.execute("PRAGMA temp_store=FILE")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = _normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        # pysqlite's own transaction handling defers BEGIN; let SQLAlchemy emit it so that a
        # transaction really spans the whole unit of work.
        event.listen(engine, "connect", _disable_pysqlite_autobegin)
        event.listen(engine, "begin", _sqlite_begin)
        for ending in ("commit", "rollback"):
            event.listen(engine, ending, _sqlite_end)
        event.listen(engine, "checkin", _sqlite_checkin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _disable_pysqlite_autobegin(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


# Writers of one process queue on this lock rather than on SQLite's: a thread waiting for
# SQLite's write lock sleeps in growing steps (up to 100 ms) and misses the moments it is free,
# so forty request threads writing at once would finish a handful of transactions a second.
_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()
_HOLDS_WRITER_LOCK = "otacm_sqlite_writer_lock"


def _writer_lock(url: str) -> threading.Lock:
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(url, threading.Lock())


def _sqlite_begin(conn: Any) -> None:
    # Writers that read before they write (the importer) ask for IMMEDIATE, so that no other
    # writer can slip in between and turn their write into SQLITE_BUSY.
    mode = conn.get_execution_options().get("sqlite_begin", "")
    if mode == "IMMEDIATE" and _HOLDS_WRITER_LOCK not in conn.info:
        lock = _writer_lock(str(conn.engine.url))
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise TimeoutError("the embedded database stayed locked by another writer")
        conn.info[_HOLDS_WRITER_LOCK] = lock
    try:
        conn.exec_driver_sql(f"BEGIN {mode}".strip())
    except BaseException:
        _release_writer(conn.info)
        raise


def _release_writer(info: dict[str, Any]) -> None:
    lock = info.pop(_HOLDS_WRITER_LOCK, None)
    if lock is not None:
        lock.release()


def _sqlite_end(conn: Any) -> None:
    _release_writer(conn.info)


def _sqlite_checkin(_dbapi_connection: Any, record: Any) -> None:
    # A transaction ended by the pool's reset (a closed connection) ends here.
    _release_writer(record.info)


def engine_from_settings(settings: Settings) -> Engine:
    return make_engine(settings.resolved_database_url())


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_write_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose transactions take SQLite's write lock at BEGIN (BEGIN IMMEDIATE).

    A deferred SQLite transaction that reads and then writes fails with SQLITE_BUSY when
    another writer committed in between; taking the lock first makes it wait its turn instead.
    PostgreSQL is unaffected.
    """
    return sessionmaker(
        bind=engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
    )


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends normally, rolled back otherwise."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (the latest by default)."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
