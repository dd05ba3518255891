"""Migrations: `flask db upgrade` on an empty database gives exactly the models' schema, on each backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from credits.config import PROJECT_ROOT, Config
from tests.conftest import _create_pg_database, _drop_pg_database

FLASK = [sys.executable, "-m", "flask", "--app", "wsgi"]


@pytest.fixture
def empty_database(backend, tmp_path: Path):
    if backend.is_pg:
        name, url = _create_pg_database()
        yield url
        _drop_pg_database(name)
    else:
        yield f"sqlite:///{tmp_path / 'empty.db'}"


def _flask(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CREDITS_ENV": "test", "CREDITS_DATABASE_URL": url}
    return subprocess.run([*FLASK, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def _diff(url: str) -> list[object]:
    from credits.models import metadata

    engine = sa.create_engine(Config(database_url=url).sqlalchemy_url())
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))
    finally:
        engine.dispose()


def test_upgrade_on_empty_database_matches_models(empty_database):
    result = _flask(empty_database, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert _diff(empty_database) == []
    check = _flask(empty_database, "db", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_downgrade_to_base_and_upgrade_again(empty_database):
    assert _flask(empty_database, "db", "upgrade").returncode == 0
    down = _flask(empty_database, "db", "downgrade", "base")
    assert down.returncode == 0, down.stderr
    engine = sa.create_engine(Config(database_url=empty_database).sqlalchemy_url())
    try:
        tables = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()
    assert tables == set()
    assert _flask(empty_database, "db", "upgrade").returncode == 0
    assert _diff(empty_database) == []


def test_wallets_and_lots_keep_room_for_hot_updates_on_postgresql(empty_database, backend):
    # Migration 0006 and the models agree (compare_metadata does not look at storage parameters).
    from credits.models import metadata

    assert _flask(empty_database, "db", "upgrade").returncode == 0
    for table in ("wallets", "lots"):
        assert metadata.tables[table].dialect_options["postgresql"]["with"] == {"fillfactor": 70}
    if not backend.is_pg:
        return  # SQLite has no fillfactor; the migration does nothing there
    engine = sa.create_engine(Config(database_url=empty_database).sqlalchemy_url())
    try:
        with engine.connect() as conn:
            options = dict(conn.execute(sa.text(
                "SELECT relname, reloptions FROM pg_class WHERE relname IN ('wallets', 'lots')")).all())
    finally:
        engine.dispose()
    assert options == {"wallets": ["fillfactor=70"], "lots": ["fillfactor=70"]}
