"""Operator commands for call charging: rate plans, switch API keys, caller numbers."""

from __future__ import annotations

import sys
from typing import TextIO

import click
from flask.cli import AppGroup

from credits.cli import domain_errors

rates_cli = AppGroup("rates", help="Rate plans: import and export CSV.")
apikey_cli = AppGroup("apikey", help="API keys for the switch.")
calls_cli = AppGroup("calls", help="Call charging settings of accounts.")


@rates_cli.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--plan", required=True, help="Plan name; an existing plan is replaced atomically.")
@click.option("--currency", default=None, help="Plan currency (default CREDITS_DEFAULT_CURRENCY).")
def rates_import(file: TextIO, plan: str, currency: str | None) -> None:
    """Import a rate CSV into plan NAME; nothing is imported if any row is bad (each listed by line)."""
    from credits import config
    from credits.rating import csv_io, service

    currency = currency or config.current().default_currency
    text = file.read()
    total = max(text.count("\n") - 1, 1)
    with domain_errors():
        if total >= 10_000:
            with click.progressbar(length=total, label="checking rates", file=sys.stderr) as bar:
                done = 0

                def progress(rows_done: int, _rows_total: int) -> None:
                    nonlocal done
                    bar.update(rows_done - done)
                    done = rows_done

                rates = csv_io.parse_rates(text, currency, progress=progress)
        else:
            rates = csv_io.parse_rates(text, currency)
    with domain_errors():
        view = service.import_plan(plan, rates, currency)
    click.echo(f"imported {view.rates} rates into plan {view.name} ({view.currency}), version {view.version}")


@rates_cli.command("export")
@click.option("--plan", required=True)
@click.option("--output", "-o", type=click.File("w"), default="-")
def rates_export(plan: str, output: TextIO) -> None:
    """Write plan NAME as CSV (same format as import)."""
    from credits.rating import csv_io, service

    with domain_errors():
        view, rates = service.export_plan(plan)
    output.write(csv_io.export_rates(rates, view.currency))


@rates_cli.command("list")
def rates_list() -> None:
    """List rate plans."""
    from credits.rating import service

    for plan in service.list_plans():
        click.echo(f"{plan.name:20} {plan.currency} {plan.rates:>8} rates  version {plan.version}")


@apikey_cli.command("create")
@click.option("--name", required=True)
@click.option("--scope", type=click.Choice(["switch"]), default="switch", show_default=True)
@click.option("--allowed-ips", default=None, help="Comma-separated addresses/networks allowed to use the key.")
def apikey_create(name: str, scope: str, allowed_ips: str | None) -> None:
    """Create an API key; print it once, alone on the last line (only its hash is stored)."""
    from credits.accounts import apikeys

    with domain_errors():
        created = apikeys.create_key(name, scope, allowed_ips)
    click.echo(f"created {scope} key {created.view.name} ({created.view.prefix}); store it now, it is not shown again")
    click.echo(created.secret)


@apikey_cli.command("revoke")
@click.argument("name_or_prefix")
def apikey_revoke(name_or_prefix: str) -> None:
    """Revoke the live keys with this name or prefix."""
    from credits.accounts import apikeys

    with domain_errors():
        count = apikeys.revoke_key(name_or_prefix)
    click.echo(f"revoked {count} key(s)")


@apikey_cli.command("list")
def apikey_list() -> None:
    """List API keys (prefix, name, scope, live or revoked)."""
    from credits.accounts import apikeys

    for view, live in apikeys.list_keys():
        click.echo(f"{view.prefix}  {view.name:20} {view.scope:8} {'live' if live else 'revoked'}")


@calls_cli.command("add-number")
@click.option("--account", required=True, help="Email or account number.")
@click.option("--phone", required=True)
def calls_add_number(account: str, phone: str) -> None:
    """Register a caller number to an account."""
    from credits.calls import service
    from credits.ledger import service as ledger

    with domain_errors():
        number = service.register_caller_number(ledger.get_wallet(account).id, phone)
    click.echo(number)


@calls_cli.command("set-plan")
@click.option("--account", required=True)
@click.option("--plan", required=True)
def calls_set_plan(account: str, plan: str) -> None:
    """Rate an account's calls with plan NAME."""
    from credits.ledger import service as ledger
    from credits.rating import service

    with domain_errors():
        service.assign_plan(ledger.get_wallet(account).id, plan)
    click.echo(f"plan {plan} set")


@calls_cli.command("set-limit")
@click.option("--account", required=True)
@click.option("--max-concurrent-calls", type=int, default=None)
def calls_set_limit(account: str, max_concurrent_calls: int | None) -> None:
    """Limit how many calls may share an account's credit at once (omit to remove the limit)."""
    from credits.calls import service
    from credits.ledger import service as ledger

    with domain_errors():
        service.set_max_concurrent_calls(ledger.get_wallet(account).id, max_concurrent_calls)
    click.echo("limit set")
