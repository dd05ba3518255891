"""Operator commands for payments: `flask --app wsgi payments reconcile-report`."""

from __future__ import annotations

import sys
from datetime import timedelta

import click
from flask.cli import AppGroup

payments_cli = AppGroup("payments", help="Card payments: reconciliation with the gateway.")


@payments_cli.command("reconcile-report")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 90),
              help="Compare intents created in the last DAYS days.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many intents are read from the gateway.")
def reconcile_report(days: int, limit: int) -> None:
    """List every mismatch between the gateway's succeeded payments and the credit granted here; exit 1 if any."""
    from credits import clock
    from credits.errors import CreditsError
    from credits.payments import reconcile

    try:
        result = reconcile.report(clock.now() - timedelta(days=days), limit=limit)
    except CreditsError as exc:
        click.echo(f"error: {exc.message if exc.safe else exc.title}", err=True)
        sys.exit(2)
    click.echo(result.text())
    if not result.ok:
        sys.exit(1)
