"""Demo data for `./scripts/run`: `flask --app wsgi demo seed` makes customers with credit and a support user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import click


@dataclass(frozen=True)
class DemoUser:
    email: str
    password: str
    role: str
    #: (amount, source, days until expiry or None for CREDITS_CREDIT_VALIDITY_DAYS, memo)
    grants: tuple[tuple[str, str, int | None, str], ...] = ()


DEMO_USERS = (
    DemoUser("alice@example.com", "alice-demo-password", "customer", (
        ("25.00", "credit_note", None, "demo: welcome credit"),
        ("5.00", "promo", 10, "demo: promo credit that expires soon"),
    )),
    DemoUser("bob@example.com", "bob-demo-password", "customer", (
        ("10.00", "credit_note", None, "demo: welcome credit"),
    )),
    DemoUser("support@example.com", "support-demo-password", "support"),
)  # fmt: skip


@dataclass(frozen=True)
class Seeded:
    user: DemoUser
    created: bool
    account_number: str
    balance: int
    currency: str


def seed() -> list[Seeded]:
    """Create the demo accounts and grant their credit; safe to repeat.

    An account that exists is kept as it is; each grant carries an idempotency key, so a second run is a
    replay that moves nothing. Raises ConfigError under CREDITS_ENV=production, and the domain errors of
    account creation and grants.
    """
    from credits import clock, config, money
    from credits.accounts import service as accounts
    from credits.errors import ConfigError, Conflict, NotFound
    from credits.ledger import service as ledger

    if config.current().is_production:
        raise ConfigError("demo data is refused when CREDITS_ENV=production")
    done: list[Seeded] = []
    for user in DEMO_USERS:
        created = False
        try:
            wallet = ledger.get_wallet(user.email)
        except NotFound:
            try:
                wallet = accounts.create_account(user.email, user.password, role=user.role).wallet
                created = True
            except Conflict:  # a concurrent seed created it first
                wallet = ledger.get_wallet(user.email)
        for n, (amount, source, days, memo) in enumerate(user.grants):
            expires_at = clock.now() + timedelta(days=days) if days is not None else None
            ledger.grant(wallet.id, money.parse_amount(amount, wallet.currency), source, expires_at=expires_at,
                         key=f"demo-seed:{user.email}:{n}", memo=memo, actor="demo:seed")  # fmt: skip
        view = ledger.balance(wallet.id)
        done.append(Seeded(user, created, view.account_number, view.balance, view.currency))
    return done


# A plain click group (not flask.cli.AppGroup) keeps this module Flask-free: `flask --app wsgi` has already
# built the app, and with it the settings and the database, when the command runs.
demo_cli = click.Group("demo", help="Demo data for local runs (refused in production).")


@demo_cli.command("seed")
def demo_seed() -> None:
    """Create the demo accounts and their credit (idempotent); print their logins and account numbers."""
    from credits import money
    from credits.errors import CreditsError

    try:
        rows = seed()
    except CreditsError as exc:
        raise click.ClickException(exc.message if exc.safe else exc.title) from exc
    for row in rows:
        click.echo(
            f"{'created' if row.created else 'exists '}  {row.user.email:22} password {row.user.password:22} "
            f"{row.user.role:9} account {row.account_number}  balance {money.format_display(row.balance, row.currency)}"
        )
