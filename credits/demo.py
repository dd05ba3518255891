"""Demo data for `./scripts/run`: `flask --app wsgi demo seed` makes customers with credit and a caller number
each, a support user, and (when none exists) the USD rate plan "default" the switch API rates calls with."""

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
    #: A caller number registered to the wallet (the switch finds the account by it).
    caller: str | None = None


#: The demo's "default" plan (USD): (prefix, destination, price per minute, connect fee, first/next increment).
DEMO_RATES = (
    ("1", "United States and Canada", "0.0100", "0", 60, 60),
    ("44", "United Kingdom", "0.0200", "0", 1, 1),
    ("4420", "United Kingdom London", "0.0150", "0", 1, 1),
    ("65", "Singapore", "0.0123", "0", 60, 6),
    ("658", "Singapore mobile", "0.0300", "0.0100", 30, 6),
    ("91", "India", "0.0350", "0", 30, 6),
)  # fmt: skip


DEMO_USERS = (
    DemoUser("alice@example.com", "alice-demo-password", "customer", (
        ("25.00", "credit_note", None, "demo: welcome credit"),
        ("5.00", "promo", 10, "demo: promo credit that expires soon"),
    ), caller="+6581230001"),
    DemoUser("bob@example.com", "bob-demo-password", "customer", (
        ("10.00", "credit_note", None, "demo: welcome credit"),
    ), caller="+6581230002"),
    DemoUser("support@example.com", "support-demo-password", "support"),
)  # fmt: skip


@dataclass(frozen=True)
class Seeded:
    user: DemoUser
    created: bool
    account_number: str
    balance: int
    currency: str
    caller: str | None = None


def seed() -> list[Seeded]:
    """Create the demo accounts and grant their credit; safe to repeat.

    An account that exists is kept as it is; each grant carries an idempotency key, so a second run is a
    replay that moves nothing. Raises ConfigError under CREDITS_ENV=production, and the domain errors of
    account creation and grants.
    """
    from credits import clock, config, money
    from credits.accounts import service as accounts
    from credits.calls import service as calls
    from credits.errors import ConfigError, Conflict, NotFound
    from credits.ledger import service as ledger

    if config.current().is_production:
        raise ConfigError("demo data is refused when CREDITS_ENV=production")
    seed_rate_plan()
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
        if user.caller and user.caller not in calls.caller_numbers(wallet.id):
            try:
                calls.register_caller_number(wallet.id, user.caller)
            except Conflict:  # registered to another account of this database: leave it there
                pass
        view = ledger.balance(wallet.id)
        registered = user.caller if user.caller in calls.caller_numbers(wallet.id) else None
        done.append(Seeded(user, created, view.account_number, view.balance, view.currency, registered))
    return done


def seed_rate_plan() -> bool:
    """Import DEMO_RATES as the USD plan "default" unless a plan of that name exists; True when imported."""
    from credits import money
    from credits.rating import service as rating
    from credits.rating.engine import Rate
    from credits.rating.models import DEFAULT_PLAN

    if any(plan.name == DEFAULT_PLAN for plan in rating.list_plans()):
        return False
    rates = [Rate(prefix, name, money.parse(price), money.parse(fee), first, nxt)
             for prefix, name, price, fee, first, nxt in DEMO_RATES]
    rating.import_plan(DEFAULT_PLAN, rates, "USD")
    return True


# A plain click group (not flask.cli.AppGroup) keeps this module Flask-free: `flask --app wsgi` has already
# built the app, and with it the settings and the database, when the command runs.
demo_cli = click.Group("demo", help="Demo data for local runs (refused in production).")


@demo_cli.command("seed")
def demo_seed() -> None:
    """Create the demo accounts and their credit (idempotent); print their logins and account numbers."""
    from credits import money
    from credits.errors import CreditsError
    from credits.rating.models import DEFAULT_PLAN

    try:
        rows = seed()
    except CreditsError as exc:
        raise click.ClickException(exc.message if exc.safe else exc.title) from exc
    for row in rows:
        click.echo(
            f"{'created' if row.created else 'exists '}  {row.user.email:22} password {row.user.password:22} "
            f"{row.user.role:9} account {row.account_number}  balance {money.format_display(row.balance, row.currency)}"
            + (f"  caller {row.caller}" if row.caller else "")
        )
    click.echo(f"rate plan  {DEFAULT_PLAN} (USD): {', '.join(prefix for prefix, *_ in DEMO_RATES)}")
