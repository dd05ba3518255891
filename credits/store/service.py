"""What the customer web pages show: one read per page, composed from the account, ledger, call and payment
services (no Flask here; credits.store.views renders it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from credits import money
from credits.errors import ValidationError

#: How many call records the dashboard lists (the full history is GET /api/v1/me/calls).
RECENT_CALLS = 10
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


@dataclass(frozen=True)
class Dashboard:
    """The signed-in customer's overview: who, how much credit, which lots expire when, the latest calls."""

    email: str
    name: str | None
    email_verified: bool
    money_frozen: bool
    mfa_enabled: bool
    account_number: str
    currency: str
    balance: int
    held: int
    available: int
    next_expiry_at: datetime | None
    lots: list[Any]  # credits.ledger.service.LotView, in draw order
    calls: list[Any]  # credits.calls.service.CallRecord, newest first


def dashboard(user_id: int) -> Dashboard:
    """Read the dashboard of `user_id`: profile flags, wallet with its lots, and the last RECENT_CALLS calls.

    Raises NotFound (no such user or no wallet).
    """
    from credits.accounts import service as accounts

    profile = accounts.get_profile(user_id)
    wallet, lots = accounts.my_wallet(user_id)
    calls = accounts.my_calls(user_id, limit=RECENT_CALLS).records
    return Dashboard(profile.email, profile.name, profile.email_verified, profile.money_frozen,
                     profile.mfa_enabled, wallet.account_number, wallet.currency, wallet.balance, wallet.held,
                     wallet.available, wallet.next_expiry_at, list(lots), list(calls))


@dataclass(frozen=True)
class BuyPage:
    """What the buy-credit page needs: the wallet, the amounts on offer, and where Stripe.js comes from."""

    currency: str
    exponent: int
    balance: int
    available: int
    packages: list[int]
    custom_min: int
    custom_max: int
    money_frozen: bool
    stripe_js_url: str
    publishable_key: str


def buy_page(user_id: int) -> BuyPage:
    """Read the buy-credit page of `user_id`: balance, packages and custom range (settings), Stripe.js origin
    and publishable key (credits.payments.provider). Raises NotFound."""
    from credits.accounts import service as accounts
    from credits.payments import provider
    from credits.payments import service as payments

    profile = accounts.get_profile(user_id)
    wallet, _lots = accounts.my_wallet(user_id)
    low, high = payments.custom_range(wallet.currency)
    return BuyPage(wallet.currency, money.CURRENCY_EXPONENTS.get(wallet.currency, 2), wallet.balance,
                   wallet.available, payments.packages(wallet.currency), low, high, profile.money_frozen,
                   provider.stripe_js_url(), provider.publishable_key())


@dataclass(frozen=True)
class SecurityOverview:
    """The security settings page: second factor, recovery codes left, freezes and earlier reports."""

    email: str
    email_verified: bool
    mfa_enabled: bool
    recovery_codes_left: int
    money_frozen: bool
    sessions: int
    reports: list[Any]  # credits.security.service.ReportView, newest first


def security_overview(user_id: int) -> SecurityOverview:
    """Read the security settings of `user_id`. Raises NotFound."""
    from credits.accounts import mfa, sessions
    from credits.accounts import service as accounts
    from credits.security import service as security

    profile = accounts.get_profile(user_id)
    left = mfa.recovery_codes_left(user_id) if profile.mfa_enabled else 0
    return SecurityOverview(profile.email, profile.email_verified, profile.mfa_enabled, left, profile.money_frozen,
                            len(sessions.list_live(user_id)), security.reports_of(user_id))


def date_from_parts(day: str, month: str, year: str, *, field: str = "date_of_birth") -> date:
    """The calendar date typed as day, month and year (free text; any year); raise ValidationError.

    Whether the date is a possible date of birth is the sign-up's business (credits.accounts.service), not
    this parser's: it only refuses what is not a date at all.
    """
    parts = [p.strip() for p in (day, month, year)]
    if not all(p.isascii() and p.isdigit() and len(p) <= 4 for p in parts):
        raise ValidationError("Enter the date as numbers: day, month and a four-digit year.", field=field)
    d, m, y = (int(p) for p in parts)
    if len(parts[2]) != 4:
        raise ValidationError("Enter the year with four digits, for example 1987.", field=field)
    try:
        return date(y, m, d)
    except ValueError as exc:
        raise ValidationError("That date does not exist. Check the day and the month.", field=field) from exc


def sign_up(email: str, password: str, name: str, day: str, month: str, year: str, country: str, *,
            ip: str | None = None) -> None:
    """Sign up from the web form: the date of birth comes as three free-text parts (CHECKLIST G49).

    Raises ValidationError (a part, or what credits.accounts.service.register refuses) and RegistrationRefused.
    """
    from credits.accounts import service as accounts

    born = date_from_parts(day, month, year)
    try:
        accounts.register(email, password, name, born, country, ip=ip)
    except ValidationError as exc:
        field = exc.extra.get("field")
        if field in FORM_MESSAGES:
            raise ValidationError(FORM_MESSAGES[field], field=field) from exc
        raise


#: What the sign-up form says for the API's terse field errors (the password rules already speak plainly).
FORM_MESSAGES = {
    "email": "Enter your email address, for example name@example.com.",
    "name": "Enter your name (up to 200 characters).",
    "date_of_birth": "That is not a possible date of birth. Check the year.",
    "country": "Enter your country as its two-letter code, for example GB, US or SG.",
}
