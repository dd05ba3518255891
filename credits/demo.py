"""Demo data for `./scripts/run`: `flask --app wsgi demo seed` makes customers with credit and a support user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import click
from flask.cli import AppGroup

demo_cli = AppGroup("demo", help="Demo data for local runs (refused in production).")


@dataclass(frozen=True)
class DemoUser:
    email: str
    password: str
    role: str
    #: (amount, source, days until expiry or None for the default validity, memo)
    grants: tuple[tuple[str, str, int | None, str], ...] = ()


DEMO_USERS = (
    DemoUser(
        "alice@example.com",
        "alice-demo-password",
        "customer",
        (
            ("25.00", "credit_note", None, "demo: welcome credit"),
            ("5.00", "promo", 10, "demo: promo credit that expires soon"),
        ),
    ),
    DemoUser(
        "bob@example.com", "bob-demo-password", "customer", (("10.00", "credit_note", None, "demo: welcome credit"),)
    ),
    DemoUser("support@example.com", "support-demo-password", "support"),
)


@demo_cli.command("seed")
def demo_seed() -> None:
    """Create the demo accounts and their credit; safe to run again (existing ones are kept, nothing doubles).

    Prints one line per account: email, password, role, account number, balance.
    """
    from credits import clock, config, money
    from credits.accounts import service as accounts
    from credits.errors import Conflict, CreditsError, NotFound
    from credits.ledger import service as ledger

    if config.current().is_production:
        raise click.ClickException("demo data is refused when CREDITS_ENV=production")
    try:
        for user in DEMO_USERS:
            try:
                wallet = ledger.get_wallet(user.email)
                created = False
            except NotFound:
                try:
                    wallet = accounts.create_account(user.email, user.password, role=user.role).wallet
                    created = True
                except Conflict:  # created by a concurrent seed
                    wallet = ledger.get_wallet(user.email)
                    created = False
            for n, (amount, source, days, memo) in enumerate(user.grants):
                expires_at = clock.now() + timedelta(days=days) if days is not None else None
                # The idempotency key makes a second seed a replay that moves nothing.
                ledger.grant(
                    wallet.id,
                    money.parse_amount(amount, wallet.currency),
                    source,
                    expires_at=expires_at,
                    key=f"demo-seed:{user.email}:{n}",
                    memo=memo,
                    actor="demo:seed",
                )
            view = ledger.balance(wallet.id)
            click.echo(
                f"{'created' if created else 'exists '}  {user.email:24} password {user.password:24} "
                f"{user.role:9} account {view.account_number}  balance "
                f"{money.format_display(view.balance, view.currency)}"
            )
    except CreditsError as exc:
        raise click.ClickException(exc.message if exc.safe else exc.title) from exc
