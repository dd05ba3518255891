"""Database: engine, session factory, declarative Base with a naming convention, and unit_of_work()."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
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
#: The largest row id (BIGINT, SQLite INTEGER): a larger number given as an id is refused before any query, which
#: both backends would fail with an overflow error instead of finding nothing.
MAX_ROW_ID = 2**63 - 1


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
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine)
        else:
            _ping_idle_connections(self.engine)
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


#: A pooled connection unused for longer than this is pinged before it is handed out (see below).
IDLE_PING_S = 10.0


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it has been idle for IDLE_PING_S or longer.

    SQLAlchemy's pool_pre_ping pings on every checkout: one extra round trip per transaction, a fifth of the
    switch API's work when it is busy. A connection in steady use was just seen working; one that sat idle
    (the database may have restarted meanwhile) is checked first, and replaced if the ping fails (raising
    DisconnectionError makes the pool discard it and connect afresh). A database restart while connections
    are in steady use fails the requests in flight at that moment; the pool then reconnects.
    """

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is not None and time.monotonic() - since < IDLE_PING_S:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()
        except Exception as exc:  # the driver's own error type: any failure means "do not use this one"
            raise DisconnectionError("the pooled connection did not answer a ping") from exc


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


# ---------------------------------------------------------------- raw transactions (PostgreSQL hot paths)

#: Called with the text of each statement a RawTransaction sends (tests count statements with it, as they do
#: with SQLAlchemy's before_cursor_execute for everything else).
raw_statement_hooks: list[Callable[[str], None]] = []


class RawTransaction:
    """One transaction on a pooled psycopg connection, for the few PostgreSQL hot paths (the switch API's
    authorize and complete) whose SQLAlchemy overhead costs more than the database work itself.

    `execute` sends a statement (psycopg placeholders, %(name)s); `pipeline()` batches statements into one
    round trip (psycopg pipeline mode: they still run one after the other, each seeing what the previous one
    did). Nothing is committed unless `commit()` is called.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        for hook in raw_statement_hooks:
            hook(sql)
        return self.conn.execute(sql, params)

    def pipeline(self) -> Any:
        return self.conn.pipeline()

    def commit(self) -> None:
        self.conn.commit()


class Precheck:
    """A check a request must pass before it does anything (the switch's API key), read by a fast path's first
    statement rather than in a round trip of its own.

    `column` is a scalar subquery (its parameters in `params`, named `%(pc_...)s`) that a fast path adds to its
    first read; the fast path hands the value to `accept` before it decides anything, and `accept` returns the
    check's result or raises (Unauthorized). A path whose first statement did not carry it (no row read, the
    general path, SQLite) calls `ensure()`, which reads it on its own (`read`) unless it was judged already.
    """

    def __init__(self, column: str, params: dict[str, Any], judge: Callable[[Any], Any],
                 read: Callable[[], Any]) -> None:
        self.column, self.params, self._judge, self._read = column, params, judge, read
        self.done = False
        self.result: Any = None

    def accept(self, value: Any) -> Any:
        self.result = self._judge(value)
        self.done = True
        return self.result

    def ensure(self) -> Any:
        return self.result if self.done else self.accept(self._read())


class _NoPrecheck(Precheck):
    """No check: the column is NULL and nothing is judged (calls from jobs, the CLI, tests, Flask routes)."""

    def __init__(self) -> None:
        super().__init__("NULL", {}, lambda _value: None, lambda: None)

    def accept(self, value: Any) -> None:
        return None

    def ensure(self) -> None:
        return None


NO_PRECHECK: Precheck = _NoPrecheck()


_sticky: ContextVar[list[Any] | None] = ContextVar("credits_db_sticky", default=None)


@contextmanager
def sticky_raw_connection() -> Iterator[None]:
    """Within the block, every raw_transaction() of this thread uses the same pooled connection, checked out
    at its first use and returned at the end (a switch request: the key check, then the work)."""
    if _sticky.get() is not None:
        yield
        return
    held: list[Any] = []
    token = _sticky.set(held)
    try:
        yield
    finally:
        _sticky.reset(token)
        for fairy in held:
            fairy.close()


@contextmanager
def raw_transaction(database: Database | None = None, *, autocommit: bool = False) -> Iterator[RawTransaction]:
    """A RawTransaction on a connection from the engine's pool (PostgreSQL only); rolled back unless committed.

    With `autocommit`, each statement is its own transaction (one round trip for a single read: no BEGIN).

    A connection that failed at the driver level (psycopg.OperationalError: lost, or in a broken state) is
    invalidated rather than returned to the pool.
    """
    import psycopg

    database = database or get()
    held = _sticky.get()
    if held:
        fairy = held[0]
    else:
        fairy = database.engine.raw_connection()
        if held is not None:
            held.append(fairy)
    try:
        conn: Any = fairy.driver_connection
        if autocommit:
            conn.autocommit = True
        try:
            yield RawTransaction(conn)
        finally:
            conn.rollback()
            if autocommit:
                conn.autocommit = False
    except psycopg.OperationalError:
        fairy.invalidate()
        if held:
            held.remove(fairy)
            fairy.close()
        raise
    finally:
        if held is None:
            fairy.close()
