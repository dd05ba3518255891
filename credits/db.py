"""Database: engine, session factory, declarative Base with a naming convention, and unit_of_work()."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: 64-bit integer ids and amounts; INTEGER on SQLite so that primary keys autoincrement there.
BigInt = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Database:
    """One engine and its session factory; made by `configure()` from create_app or a CLI/job entry point."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            if ":memory:" in url or url in ("sqlite://", "sqlite:///"):
                from sqlalchemy.pool import StaticPool

                kwargs["poolclass"] = StaticPool
            else:
                kwargs["poolclass"] = NullPool
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine)
        self.sessionmaker = sessionmaker(bind=self.engine, expire_on_commit=False, autoflush=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_setup(engine: Engine) -> None:
    """SQLite: WAL, foreign keys, and BEGIN IMMEDIATE so that writers serialise at the start of a transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_db: Database | None = None


def configure(url: str, **kwargs: Any) -> Database:
    """Create the process-wide Database for `url` (replacing any previous one) and return it."""
    global _db
    if _db is not None and _db.url == url:
        return _db
    if _db is not None:
        _db.dispose()
    _db = Database(url, **kwargs)
    return _db


def get() -> Database:
    """The configured Database; raises if `configure()` has not been called."""
    if _db is None:
        raise RuntimeError("credits.db.configure(url) has not been called")
    return _db


class UnitOfWork:
    """One database transaction. Nothing is committed unless `commit()` is called; leaving rolls back the rest."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()


@contextmanager
def unit_of_work(database: Database | None = None) -> Iterator[UnitOfWork]:
    """Open a session in one transaction; roll back whatever was not committed when the block ends."""
    database = database or get()
    session = database.sessionmaker()
    try:
        yield UnitOfWork(session)
    finally:
        session.rollback()
        session.close()


def is_retryable(exc: BaseException) -> bool:
    """True for PostgreSQL serialization failures and deadlocks, and SQLite 'database is locked'."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(getattr(exc.orig, "diag", None), "sqlstate", None) or getattr(exc.orig, "sqlstate", None)
        if sqlstate in ("40001", "40P01"):
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
            return True
    return False


def retrying(fn: Any, *args: Any, attempts: int = 5, **kwargs: Any) -> Any:
    """Call `fn` again (with a short back-off) when it fails on a deadlock or serialization failure."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except DBAPIError as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
                raise
            time.sleep(0.005 * (2**attempt))
    raise AssertionError("unreachable")


def insert_for(dialect: str) -> Any:
    """The dialect's INSERT construct (with on_conflict_do_nothing)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert
