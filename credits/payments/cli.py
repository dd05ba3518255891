"""Operator commands for payments: `flask --app wsgi payments reconcile-report`, `page-check`, `page-accept`."""

from __future__ import annotations

import sys
from datetime import timedelta

import click
from flask.cli import AppGroup

payments_cli = AppGroup("payments", help="Card payments: reconciliation with the gateway; payment-page integrity.")


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


@payments_cli.command("page-check")
def page_check() -> None:
    """Check every payment page now (CHECKLIST I60): ok, or CHANGED with the differences from the accepted
    baseline. Records the result and alerts like the `check-payment-pages` job. Exit 1 when a page differs from
    its accepted baseline, 2 when a page could not be seen (and none differs)."""
    from flask import current_app

    from credits.payments import page_integrity

    report = page_integrity.run(current_app._get_current_object())  # type: ignore[attr-defined]
    for page in report.pages:
        if page.outcome == "error":
            click.echo(f"{page.path}: ERROR {page.error}")
        elif page.outcome == "changed":
            alert = "alert raised" if page.alerted else "already alerted"
            click.echo(f"{page.path}: CHANGED {page.fingerprint} (accepted baseline {page.baseline}; {alert})")
            for line in page.changes:
                click.echo(f"    {line}")
        else:
            note = " (first check: recorded as the baseline)" if page.baseline_recorded else ""
            click.echo(f"{page.path}: ok {page.fingerprint}{note}")
    if not report.pages:
        click.echo("no payment pages found (no view is decorated with credits.web.csp.payment_page)")
    if report.changed:
        sys.exit(1)
    if report.errors:
        sys.exit(2)


@payments_cli.command("page-accept")
@click.argument("page")
@click.option("--by", "by", required=True, help="Email of the security officer or admin accepting the change.")
@click.option("--reason", required=True, help="Why the change is expected (kept in the audit log).")
@click.option("--fingerprint", default=None,
              help="Accept only if the current fingerprint starts with this (what you reviewed).")
def page_accept(page: str, by: str, reason: str, fingerprint: str | None) -> None:
    """Accept the current fingerprint of payment page PAGE (a path such as /buy) as its new baseline."""
    from credits.errors import CreditsError
    from credits.payments import page_integrity

    try:
        result = page_integrity.accept(page, by=by, reason=reason, fingerprint_prefix=fingerprint)
    except CreditsError as exc:
        click.echo(f"error: {exc.message if exc.safe else exc.title}", err=True)
        sys.exit(1)
    if result.changed:
        click.echo(f"{result.path}: baseline is now {result.fingerprint} (was {result.previous})")
    else:
        click.echo(f"{result.path}: {result.fingerprint} already is the accepted baseline")
