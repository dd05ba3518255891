"""Operator commands under `flask --app wsgi ...`: scriptable, no prompts, non-zero exit on error."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup

from credits import money
from credits.demo import demo_cli
from credits.errors import CreditsError

ledger_cli = AppGroup("ledger", help="Credit ledger: grants and the invariant audit.")
accounts_cli = AppGroup("accounts", help="Customer and staff accounts.")
jobs_cli = AppGroup("jobs", help="Scheduled jobs (one jobs process per deployment).")
audit_cli = AppGroup("audit", help="The hash-chained audit log.")
keys_cli = AppGroup("keys", help="Field-encryption keys (CREDITS_ENCRYPTION_KEYS): rotation and checks.")


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn a domain error into a one-line message on stderr and exit status 1."""
    try:
        yield
    except CreditsError as exc:
        click.echo(f"error: {exc.message if exc.safe else exc.title}", err=True)
        sys.exit(1)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO-8601 time: {value}") from exc
    if parsed.tzinfo is None:
        raise click.BadParameter("give a timezone, for example 2027-01-01T00:00:00Z")
    return parsed


@accounts_cli.command("create")
@click.option("--email", required=True)
@click.option("--password", required=True)
@click.option("--role", default="customer", show_default=True)
@click.option("--currency", default=None, help="Wallet currency (default CREDITS_DEFAULT_CURRENCY).")
@click.option("--phone", default=None, help="Caller number the switch knows the account by (E.164, +...).")
@click.option("--plan", default=None, help="Rate plan name (default: the plan named 'default').")
def accounts_create(email: str, password: str, role: str, currency: str | None, phone: str | None,
                    plan: str | None) -> None:
    """Create an account and its wallet; print the account number alone on the last line."""
    from credits.accounts import service

    with domain_errors():
        account = service.create_account(email, password, role=role, currency=currency, phone=phone, plan=plan)
    click.echo(f"created {account.role} account for {account.email} ({account.wallet.currency})")
    click.echo(account.wallet.account_number)


@ledger_cli.command("grant")
@click.option("--account", required=True, help="Email address or account number.")
@click.option("--amount", required=True, help="Decimal amount in the wallet currency, e.g. 10.00.")
@click.option("--reason", required=True, help="Why the credit is granted (kept in the journal and audit log).")
@click.option("--expires-at", default=None, help="ISO-8601 expiry (default: now + CREDITS_CREDIT_VALIDITY_DAYS).")
@click.option("--source", type=click.Choice(["credit_note", "promo"]), default="credit_note", show_default=True)
def ledger_grant(account: str, amount: str, reason: str, expires_at: str | None, source: str) -> None:
    """Grant goodwill credit to an account (audit-logged)."""
    from credits.ledger import operator

    with domain_errors():
        lot = operator.grant_by_operator(account, amount, reason, expires_at=_parse_time(expires_at), source=source)
    click.echo(f"granted {money.format_micro(lot.granted)} as lot {lot.id}, expires {lot.expires_at.isoformat()}")


@ledger_cli.command("audit")
def ledger_audit() -> None:
    """Check every ledger invariant; exit 1 with a report on any violation."""
    from credits.ledger.audit import run_audit

    report = run_audit()
    click.echo(report.text())
    if not report.ok:
        sys.exit(1)


@jobs_cli.command("run")
def jobs_run() -> None:
    """Run every job on its schedule until stopped (Ctrl-C or SIGTERM)."""
    import signal

    from credits import config, jobs

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    jobs.run_forever(config.current().job_interval_s or None)


@jobs_cli.command("run-once")
@click.argument("name")
def jobs_run_once(name: str) -> None:
    """Run one job now, print what it did; exit non-zero if it fails or another process is running it."""
    from credits import jobs

    known = jobs.table()
    if name not in known:
        raise click.BadParameter(f"unknown job {name!r}; jobs: {', '.join(sorted(known))}", param_hint="NAME")
    try:
        result = jobs.run_once(name)
    except jobs.LockBusy:
        click.echo(f"{name}: another jobs process is running it", err=True)
        sys.exit(3)
    except CreditsError as exc:
        click.echo(f"{name} failed: {exc.message if exc.safe else exc.title}", err=True)
        sys.exit(1)
    click.echo(f"{name}: {json.dumps(result)}")


@jobs_cli.command("list")
def jobs_list() -> None:
    """List the jobs and their intervals."""
    from credits import jobs

    for job in jobs.table().values():
        click.echo(f"{job.name:20} every {job.every_s:>5} s  {job.doc}")


@audit_cli.command("verify")
def audit_verify() -> None:
    """Verify the audit log's hash chain; exit 1 at the first broken link."""
    from credits import audit

    report = audit.verify()
    if report.ok:
        click.echo(f"audit log: {report.entries} entries, chain intact")
        return
    click.echo(f"audit log: chain broken at entry {report.broken_at}: {report.reason}")
    sys.exit(1)


@keys_cli.command("rotate")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Values re-encrypted per committed transaction.")
def keys_rotate(batch: int) -> None:
    """Re-encrypt every value not under the primary key (the first of CREDITS_ENCRYPTION_KEYS).

    Commits batch by batch: if it stops, run it again and it carries on. Running it when everything is
    under the primary changes nothing. Afterwards `keys check` shows that the retired key holds no value.
    """
    from credits import crypto
    from credits import models as _models  # noqa: F401 - registers every encrypted column

    with domain_errors():
        ring = crypto.keyring()
        click.echo(f"primary key: {ring.primary}; known keys: {', '.join(ring.keys)}")

        def progress(p: crypto.RotationProgress) -> None:
            click.echo(f"{p.table}.{p.column}: {p.done} re-encrypted, {p.remaining} to go")

        counts = crypto.rotate(batch=batch, on_progress=progress)
    columns = sum(1 for n in counts.values() if n)
    click.echo(f"rotated {sum(counts.values())} values in {columns} columns")


@keys_cli.command("check")
def keys_check() -> None:
    """Decrypt every encrypted value; print how many each key id holds; exit 1 if any does not decrypt."""
    from credits import crypto
    from credits import models as _models  # noqa: F401 - registers every encrypted column

    with domain_errors():
        census = crypto.check()
        primary = crypto.keyring().primary
    for key_id, count in sorted(census.by_key.items()):
        click.echo(f"key {key_id}{' (primary)' if key_id == primary else ''}: {count} values")
    if not census.ok:
        click.echo(f"{len(census.failures)} values do not decrypt: {', '.join(census.failures[:20])}", err=True)
        sys.exit(1)
    click.echo("every value decrypts")


class LazyGroup(click.Group):
    """A command group that stands for another one, loaded (`load()`) only when one of its commands runs.

    `flask --help` lists it by its name and help alone; `flask NAME ...` (a command, `--help`, shell completion)
    gets the loaded group's context, so the loaded group parses, runs and documents everything itself.
    """

    def __init__(self, name: str, load: Callable[[], click.Group], help: str) -> None:
        super().__init__(name, help=help)
        self._load = load

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return self._load().make_context(info_name, args, parent=parent, **extra)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._load().list_commands(ctx)


class _MigrateState:
    """`app.extensions["migrate"]` until Flask-Migrate is loaded: the first attribute read loads it.

    So `flask_migrate.upgrade()` and friends, called in an app context (the tests, scripts), find the extension
    as if `Migrate().init_app(app)` had run in create_app.
    """

    def __init__(self, load: Callable[[], Any], directory: str) -> None:
        self._load = load
        self.directory = directory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._load(), name)


def register_migrate(app: Flask, directory: str) -> None:
    """Flask-Migrate's `db` commands (`flask --app wsgi db upgrade`, ...), with Alembic imported only for them.

    Importing Alembic (with Mako and every dialect's DDL module) costs about 0.3 s, and every other command and
    the web app never need it. The first use of the `db` group or of `app.extensions["migrate"]` runs
    `Migrate(directory=...).init_app(app)`, which puts the real extension state and `db` group in their place.
    """

    def load() -> Any:
        state = app.extensions["migrate"]
        if isinstance(state, _MigrateState):
            # Importing Alembic logs each of its built-in plugins at INFO. Imported by create_app before logging
            # was configured, it said nothing; neither does it now.
            plugins_log = logging.getLogger("alembic.runtime.plugins")
            level = plugins_log.level
            plugins_log.setLevel(logging.WARNING)
            try:
                from flask_migrate import Migrate
            finally:
                plugins_log.setLevel(level)
            Migrate(directory=directory).init_app(app)
            state = app.extensions["migrate"]
        return state

    def load_group() -> click.Group:
        load()
        group = app.cli.commands["db"]
        assert isinstance(group, click.Group) and not isinstance(group, LazyGroup)
        return group

    app.extensions["migrate"] = _MigrateState(load, directory)
    app.cli.add_command(LazyGroup("db", load_group, help="Perform database migrations."))


GROUPS: list[click.Group] = [ledger_cli, accounts_cli, jobs_cli, audit_cli, keys_cli, demo_cli]
EXTRA: list[Callable[[Flask], Any]] = []


def register(app: Flask) -> None:
    from credits.calls.cli import apikey_cli, calls_cli, rates_cli

    for group in [*GROUPS, rates_cli, apikey_cli, calls_cli]:
        app.cli.add_command(group)
    for hook in EXTRA:
        hook(app)
