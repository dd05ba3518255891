"""Benchmark the operator CLI's startup: `flask --app wsgi ledger audit` against a minimal Flask + SQLAlchemy app.

    .venv/bin/python scripts/bench_cli.py [--runs 10]

Operators, cron jobs and deployment scripts run `flask --app wsgi ...` all the time, so what one command costs
is mostly what starting the app costs. Two commands, each run --runs times in a fresh interpreter (a subprocess,
the `flask` script of this venv, from the project directory, with no CREDITS_*, FLASK_* or PYTHON* setting but
the database; so PYTHONDONTWRITEBYTECODE does not make every run compile every module again, and the bytecode
caches are what an installed deployment has):

1. minimal: a Flask app written to a temporary directory, with one ORM model and one CLI command that opens a
   SQLite database and runs one query (`SELECT count(*)` of the model's table) through a SQLAlchemy Session:
   what Python, Flask, SQLAlchemy and Flask's CLI cost on this machine, and nothing of this project.
2. app: `flask --app wsgi ledger audit` on an empty SQLite database migrated with `flask --app wsgi db upgrade`
   (the audit's queries take a few milliseconds there; the rest is startup).

Runs alternate (minimal, app; app, minimal; ...) after one warm-up run of each (bytecode caches), so that both
see the same conditions on a shared, noisy machine. Prints the median wall time of each and their ratio
(target <= 2.0), and the median CPU time (user + system) of each, steadier than wall time when the machine is
busy. This is a benchmark, not a test: it asserts nothing; run it a few times.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 2.0

MINIMAL_APP = '''\
"""A minimal Flask + SQLAlchemy app with one CLI command (written by scripts/bench_cli.py)."""

import os

import click
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def create_app() -> Flask:
    app = Flask(__name__)
    engine = sa.create_engine(os.environ["BENCH_CLI_DATABASE_URL"])

    @app.cli.command("count")
    def count() -> None:
        """Count the items."""
        with Session(engine) as session:
            n = session.scalar(sa.select(sa.func.count()).select_from(Item))
        click.echo(f"items: {n}")

    return app


app = create_app()
'''


def flask_command() -> list[str]:
    """This venv's `flask` script (what operators run), else `python -m flask`."""
    script = Path(sys.executable).with_name("flask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flask"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITS_", "FLASK_", "PYTHON"))}
    env.update(extra)
    return env


def timed(cmd: list[str], env: dict[str, str], expect: str) -> tuple[float, float]:
    """(wall s, CPU s) of one run; exits with its output if it fails or does not print `expect`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or expect not in proc.stdout:
        sys.exit(f"bench_cli: {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command (default 10)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    flask = flask_command()
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        work = Path(tmp)
        minimal_app = work / "bench_cli_minimal.py"
        minimal_app.write_text(MINIMAL_APP)
        minimal_db = work / "minimal.db"
        with sqlite3.connect(minimal_db) as conn:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL)")
        app_db = work / "credits.db"
        minimal = ([*flask, "--app", str(minimal_app), "count"],
                   clean_env(BENCH_CLI_DATABASE_URL=f"sqlite:///{minimal_db}"), "items: 0")
        app_env = clean_env(CREDITS_DATABASE_URL=f"sqlite:///{app_db}")
        app = ([*flask, "--app", "wsgi", "ledger", "audit"], app_env, "no violations")
        migrated = subprocess.run([*flask, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=app_env,
                                  capture_output=True, text=True, check=False)
        if migrated.returncode != 0:
            sys.exit(f"bench_cli: flask --app wsgi db upgrade failed:\n{migrated.stdout}{migrated.stderr}")

        timed(*minimal)  # warm-up: bytecode caches, the page cache
        timed(*app)
        times: dict[str, list[tuple[float, float]]] = {"minimal": [], "app": []}
        print(f"{args.runs} runs of each, alternating ...", flush=True)
        for i in range(args.runs):
            order = [("minimal", minimal), ("app", app)]
            for name, run in order if i % 2 == 0 else order[::-1]:
                times[name].append(timed(*run))

    wall = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    ratio = wall["app"] / wall["minimal"]
    print("\n==== bench_cli results " + "=" * 44)
    print(f"minimal Flask + SQLAlchemy CLI command: {wall['minimal'] * 1000:6.0f} ms median wall, "
          f"{cpu['minimal'] * 1000:6.0f} ms CPU   (min {min(w for w, _ in times['minimal']) * 1000:.0f} ms)")
    print(f"flask --app wsgi ledger audit:          {wall['app'] * 1000:6.0f} ms median wall, "
          f"{cpu['app'] * 1000:6.0f} ms CPU   (min {min(w for w, _ in times['app']) * 1000:.0f} ms)")
    print(f"ratio app / minimal: {ratio:.2f} wall, {cpu['app'] / cpu['minimal']:.2f} CPU  "
          f"(target <= {TARGET:.1f}: {'ok' if ratio <= TARGET else 'BELOW TARGET'})")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("=" * 67)
    return 0


if __name__ == "__main__":
    sys.exit(main())
