"""Shared fixtures: one migrated database per backend per session, cleaned between tests; frozen clock; factories.

Backends: SQLite always; PostgreSQL when CREDITS_TEST_DATABASE_URL is set or a server answers on
127.0.0.1:5432 (a fresh database is created for the session and dropped after). With
CREDITS_TEST_REQUIRE_POSTGRES=1 (CI) a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings

from credits import clock as clock_mod
from credits import config as config_mod
from credits import db as db_mod

# Property tests check results, not speed: Hypothesis' default deadline (200 ms per example) fails an example
# that a busy CI host merely paused (DeadlineExceeded, or Flaky when the rerun is quick). The tests that set
# their own settings already say deadline=None; this covers the others (rating engine, rate CSV).
settings.register_profile("credits", deadline=None)
settings.load_profile("credits")

ADMIN_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
EPOCH = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def _pg_wanted() -> bool:
    return bool(os.environ.get("CREDITS_TEST_DATABASE_URL")) or _pg_reachable()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        names = ["sqlite"]
        if metafunc.definition.get_closest_marker("postgres"):
            names = ["postgresql"]
        elif _pg_wanted() or os.environ.get("CREDITS_TEST_REQUIRE_POSTGRES") == "1":
            names.append("postgresql")
        metafunc.parametrize("backend", names, scope="session", indirect=True)


@dataclass
class Backend:
    name: str
    url: str  # CREDITS_DATABASE_URL form

    @property
    def is_pg(self) -> bool:
        return self.name == "postgresql"


def _admin_url() -> str:
    url = os.environ.get("CREDITS_TEST_DATABASE_URL") or ADMIN_URL_DEFAULT
    return url


def _sa_url(url: str) -> str:
    return config_mod.Config(database_url=url).sqlalchemy_url()


def _create_pg_database() -> tuple[str, str]:
    base = sa.engine.make_url(_sa_url(_admin_url()))
    name = f"credits_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = base.set(database=name).render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
    return name, url


def _drop_pg_database(name: str) -> None:
    base = sa.engine.make_url(_sa_url(_admin_url()))
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate(url: str) -> None:
    """Run `flask db upgrade` (Alembic via Flask-Migrate) against `url`."""
    from flask_migrate import upgrade

    from credits import create_app

    app = create_app(make_config(url))
    with app.app_context():
        upgrade(directory=str(config_mod.PROJECT_ROOT / "migrations"))


def make_config(url: str, **overrides: Any) -> config_mod.Config:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": url,
        "secret_key": "test-secret-key-0123456789abcdef0123456789",
    }
    values.update(overrides)
    return config_mod.Config(**values)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "postgresql":
        if not _pg_wanted():
            if os.environ.get("CREDITS_TEST_REQUIRE_POSTGRES") == "1":
                pytest.fail("PostgreSQL is required (CREDITS_TEST_REQUIRE_POSTGRES=1) but not reachable")
            pytest.skip("PostgreSQL not reachable")
        name, url = _create_pg_database()
        try:
            migrate(url)
            yield Backend("postgresql", url)
        finally:
            db_mod.get().dispose() if db_mod._db is not None else None
            _drop_pg_database(name)
    else:
        path: Path = tmp_path_factory.mktemp("sqlite") / "credits.db"
        url = f"sqlite:///{path}"
        migrate(url)
        yield Backend("sqlite", url)


TABLES_IN_DELETE_ORDER: list[str] | None = None


def clean(database: db_mod.Database) -> None:
    """Empty every table (migrations stay applied)."""
    from credits.models import metadata

    tables = [t.name for t in reversed(metadata.sorted_tables)]
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":
            conn.execute(sa.text("SET session_replication_role = replica"))
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            conn.execute(sa.text("SET session_replication_role = DEFAULT"))
        else:
            for name in tables:
                conn.execute(sa.text(f"DELETE FROM {name}"))
        conn.commit()


@pytest.fixture
def clock() -> Iterator[clock_mod.FrozenClock]:
    frozen = clock_mod.FrozenClock(EPOCH)
    previous = clock_mod.install(frozen)
    yield frozen
    clock_mod.install(previous)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change settings for its app."""
    return {}


@pytest.fixture
def app(backend: Backend, clock: clock_mod.FrozenClock, settings_overrides: dict[str, Any]) -> Iterator[Any]:
    from credits import create_app

    application = create_app(make_config(backend.url, **settings_overrides))
    application.config["TESTING"] = True
    # The test client speaks https, so that `__Host-` cookies (Secure) are sent as a browser would send them.
    application.config["PREFERRED_URL_SCHEME"] = "https"
    database = db_mod.get()
    clean(database)
    yield application
    clean(database)


@pytest.fixture
def database(app: Any) -> db_mod.Database:
    return db_mod.get()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Any) -> Any:
    return app.test_cli_runner()


class Factory:
    """Test data: accounts with wallets and credit."""

    def __init__(self) -> None:
        self.n = 0

    def account(self, email: str | None = None, *, credit: int = 0, currency: str = "USD",
                status: str = "active", role: str = "customer", **grant_kw: Any) -> Any:
        from credits.accounts import service as accounts
        from credits.ledger import service as ledger

        self.n += 1
        account = accounts.create_account(email or f"user{self.n}@example.com", "correct horse battery",
                                          role=role, currency=currency)
        if credit:
            ledger.grant(account.wallet.id, credit, grant_kw.pop("source", "purchase"), **grant_kw)
        if status != "active":
            accounts.set_status(account.user_id, status)
        return account


@pytest.fixture
def make(app: Any) -> Factory:
    return Factory()


def row_counts(database: db_mod.Database) -> dict[str, int]:
    """Rows per table: tests compare before/after to show bad input changed nothing."""
    from credits.models import metadata

    with database.engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in metadata.sorted_tables}


def table_snapshot(database: db_mod.Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for comparisons that must see no change at all."""
    from credits.models import metadata

    with database.engine.connect() as conn:
        return {t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)).all()) for t in metadata.sorted_tables}
