"""Database engines: a SQLite file per service by default, one PostgreSQL schema per service in production.

Every transaction a handler opens is short and never awaits, so SQLite's single writer lock is held for
microseconds; `BEGIN IMMEDIATE` takes that lock up front so two processes never deadlock upgrading it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pydantic_core
from sqlalchemy import Engine, Table, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlmodel import Session, SQLModel, create_engine

from services.shared.settings import Settings


def table_of(model: type[SQLModel]) -> Table:
    """The SQLAlchemy table behind a SQLModel table class."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; everything stored here is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def database_url_for(settings: Settings, service: str) -> str:
    if settings.database_url:
        return settings.database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{settings.data_dir / f'{service}.db'}"


def schema_name(service: str, prefix: str = "") -> str:
    name = re.sub(r"[^a-z0-9_]", "_", f"{prefix}{service}".lower())
    return name


def _to_json(value: Any) -> str:
    # JSON columns hold decisions and explanations of several kilobytes: Rust's encoder, not the stdlib's.
    return pydantic_core.to_json(value).decode()


JSON_CODEC: dict[str, Any] = {"json_serializer": _to_json, "json_deserializer": pydantic_core.from_json}


def create_service_engine(url: str, service: str, tables: Sequence[Table], schema_prefix: str = "") -> Engine:
    """Engine for one service, with its tables created (idempotently, safe for concurrent workers)."""
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url)
        SQLModel.metadata.create_all(engine, tables=list(tables))
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    base = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **JSON_CODEC)
    schema = schema_name(service, schema_prefix)
    engine = base.execution_options(schema_translate_map={None: schema})
    with engine.begin() as conn:
        # Workers of one service may start together: serialise the DDL on an advisory lock.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(schema.encode())})
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        SQLModel.metadata.create_all(conn, tables=list(tables))
    return engine


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **JSON_CODEC)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" hook below emits BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


DEFERRED_TO_COMMIT = "deferred_to_commit"


def defer_to_commit(session: Session, key: str, action: Callable[[Session], object]) -> None:
    """Run `action` once, just before the transaction commits, however often it is asked for under `key`:
    a batch of events that each freed capacity re-plans the queue once."""
    session.info.setdefault(DEFERRED_TO_COMMIT, {})[key] = action


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: the effect, its outbox rows and its inbox row commit together or not at all."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            while deferred := session.info.pop(DEFERRED_TO_COMMIT, None):
                session.flush()
                session.expunge_all()  # the actions read the database, not objects loaded before
                for action in deferred.values():
                    action(session)
            session.commit()
        except BaseException:
            session.rollback()
            raise


def empty_json_list() -> list[Any]:
    """Default factory for JSON list columns. Not the builtin `list`: SQLModel asks pydantic, at every
    construction of a table row, whether the factory takes arguments; inspecting a builtin costs ~60 us."""
    return []


def upsert_insert(session: Session) -> Any:
    """The dialect's INSERT construct, which has ON CONFLICT (SQLite and PostgreSQL alike)."""
    return sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert


@cache
def _insert_ignoring_statement(insert: Any, table: Table) -> Any:
    # Built once and given its values as parameters: building `.values(...)` anew costs ~3x the execution.
    # RETURNING says whether a row went in (psycopg reports no row count for ON CONFLICT DO NOTHING).
    return insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def insert_ignoring_duplicates(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite or PostgreSQL; True when the row was new. A concurrent
    insert of the same key waits for the other transaction and then does nothing."""
    statement = _insert_ignoring_statement(upsert_insert(session), table)
    return session.execute(statement, values).first() is not None


def is_transient_database_error(error: BaseException) -> bool:
    """Errors worth retrying the same message for, rather than dead-lettering it."""
    if isinstance(error, OperationalError | DisconnectionError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated
