"""Bad input to the ledger: each is refused with a clear domain error and changes nothing in the database."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

from credits import money
from credits.errors import (
    AccountNotActive,
    DomainError,
    InsufficientCredit,
    LimitExceeded,
    NotFound,
    ValidationError,
)
from credits.ledger import service as ledger
from tests.conftest import row_counts, table_snapshot

USD = 1_000_000
BAD_AMOUNTS: dict[str, Any] = {
    "zero": 0, "minus-one": -1, "negative": -5 * USD, "1e30": 10**30, "max+1": money.MAX_AMOUNT + 1,
    "float": 1.5, "float-whole": 10.0, "true": True, "false": False, "str": "10", "decimal-str": "10.00",
    "none": None,
}
# A charge of zero is a valid settlement (an unanswered call).
BAD_CHARGES = {name: value for name, value in BAD_AMOUNTS.items() if name not in ("zero", "false")}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"transfer_min": "1.00", "transfer_max": "20.00", "transfer_daily_limit": "50.00"}


@contextmanager
def refused(database: Any, error: type[DomainError], match: str | None = None):
    """Expect `error` (a safe domain error with a message) and no change to any table."""
    before = row_counts(database)
    snapshot = table_snapshot(database)
    with pytest.raises(error, match=match) as info:
        yield info
    assert info.value.safe and info.value.message
    assert row_counts(database) == before
    assert table_snapshot(database) == snapshot


# ---------------------------------------------------------------- amounts
# One test per operation walks every bad amount (the failing one is `name` in the traceback).


def test_grant_bad_amounts(make, database):
    wallet = make.account().wallet
    for name, amount in BAD_AMOUNTS.items():
        with refused(database, ValidationError, "amount" if name != "none" else None):
            ledger.grant(wallet.id, amount, "purchase")


def test_reserve_bad_amounts(make, database):
    wallet = make.account(credit=10 * USD).wallet
    for _name, amount in BAD_AMOUNTS.items():
        with refused(database, ValidationError):
            ledger.reserve(wallet.id, "call-1", amount)


def test_settle_bad_amounts(make, database):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    for _name, amount in BAD_CHARGES.items():
        with refused(database, ValidationError):
            ledger.settle("call-1", amount)
    assert ledger.release("call-1").status == "released"  # the hold is untouched and still active


def test_transfer_bad_amounts(make, database):
    wallet = make.account(credit=10 * USD).wallet
    make.account("bob@example.com")
    for _name, amount in BAD_AMOUNTS.items():
        with refused(database, ValidationError):
            ledger.transfer(wallet.id, "bob@example.com", amount)


def test_debit_lot_bad_amounts(make, database):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase").lot
    for _name, amount in BAD_AMOUNTS.items():
        with refused(database, ValidationError):
            ledger.debit_lot_for_refund(lot.id, amount, key="refund-1")


# ---------------------------------------------------------------- grants


def test_grant_unknown_currency(make, database):
    wallet = make.account().wallet
    with refused(database, ValidationError, "unknown currency"):
        ledger.grant(wallet.id, 5 * USD, "purchase", currency="XXX")


def test_grant_in_another_currency(make, database):
    wallet = make.account().wallet
    with refused(database, ValidationError, "holds USD"):
        ledger.grant(wallet.id, 5 * USD, "purchase", currency="EUR")


def test_open_wallet_unknown_currency(make, database):
    with refused(database, ValidationError, "unknown currency"):
        make.account(currency="ZZZ")


@pytest.mark.parametrize("source", ["gift", "transfer_in", "", None])
def test_grant_bad_source(make, database, source):
    wallet = make.account().wallet
    with refused(database, ValidationError, "source"):
        ledger.grant(wallet.id, 5 * USD, source)


@pytest.mark.parametrize("offset", [timedelta(0), -timedelta(seconds=1), -timedelta(days=400)],
                         ids=["now", "a-second-ago", "last-year"])
def test_grant_already_expired(make, database, clock, offset):
    wallet = make.account().wallet
    with refused(database, ValidationError, "already be expired"):
        ledger.grant(wallet.id, 5 * USD, "purchase", expires_at=clock.now() + offset)


def test_grant_naive_expiry(make, database, clock):
    wallet = make.account().wallet
    naive = datetime(2030, 1, 1, 0, 0)
    with refused(database, ValidationError, "timezone"):
        ledger.grant(wallet.id, 5 * USD, "purchase", expires_at=naive)


def test_grant_expiry_not_a_datetime(make, database):
    wallet = make.account().wallet
    with refused(database, ValidationError, "datetime"):
        ledger.grant(wallet.id, 5 * USD, "purchase", expires_at="2030-01-01T00:00:00Z")


@pytest.mark.parametrize("account", [999_999, "nobody@example.com", "0000000000"])
def test_grant_unknown_account(make, database, account):
    make.account()
    with refused(database, NotFound):
        ledger.grant(account, 5 * USD, "purchase")


@pytest.mark.parametrize("key", ["", "k" * 201, 42])
def test_grant_bad_key(make, database, key):
    wallet = make.account().wallet
    with refused(database, ValidationError, "idempotency key"):
        ledger.grant(wallet.id, 5 * USD, "purchase", key=key)


def test_grant_beyond_the_maximum_balance(make, database):
    wallet = make.account().wallet
    for _ in range(10):
        ledger.grant(wallet.id, money.MAX_AMOUNT, "purchase")
    with refused(database, DomainError, "maximum balance"):
        ledger.grant(wallet.id, 1, "purchase")


# ---------------------------------------------------------------- holds


@pytest.mark.parametrize("key", [None, "", "k" * 201])
def test_reserve_bad_key(make, database, key):
    wallet = make.account(credit=10 * USD).wallet
    with refused(database, ValidationError):
        ledger.reserve(wallet.id, key, 1 * USD)


def test_reserve_more_than_available(make, database):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 6 * USD)
    with refused(database, InsufficientCredit) as info:
        ledger.reserve(wallet.id, "call-2", 4 * USD + 1)
    assert info.value.extra["available"] == 4 * USD


@pytest.mark.parametrize("ttl", [0, -5, 1.5, True])
def test_reserve_bad_ttl(make, database, ttl):
    wallet = make.account(credit=10 * USD).wallet
    with refused(database, ValidationError):
        ledger.reserve(wallet.id, "call-1", 1 * USD, ttl_s=ttl)


def test_reserve_unknown_wallet(make, database):
    make.account(credit=10 * USD)
    with refused(database, NotFound):
        ledger.reserve(999_999, "call-1", 1 * USD)
    with refused(database, NotFound):
        ledger.reserve("nobody@example.com", "call-1", 1 * USD)


@pytest.mark.parametrize("key", ["no-such-call", "", "k" * 300, None])
def test_settle_and_release_unknown_hold(make, database, key):
    make.account(credit=10 * USD)
    with refused(database, NotFound):
        ledger.settle(key, 1 * USD)
    with refused(database, NotFound):
        ledger.release(key)


# ---------------------------------------------------------------- transfers


@pytest.mark.parametrize("to", ["nobody@example.com", "0000000000", 999_999, "  "])
def test_transfer_to_missing_account(make, database, to):
    wallet = make.account(credit=10 * USD).wallet
    with refused(database, NotFound):
        ledger.transfer(wallet.id, to, 5 * USD)


@pytest.mark.parametrize("to", [None, 1.5, ["bob@example.com"]], ids=["none", "float", "list"])
def test_transfer_to_something_that_is_no_account_name(make, database, to):
    wallet = make.account(credit=10 * USD).wallet
    with refused(database, ValidationError):
        ledger.transfer(wallet.id, to, 5 * USD)


@pytest.mark.parametrize("status", ["closed", "frozen", "restricted"])
def test_transfer_to_inactive_account(make, database, status):
    wallet = make.account(credit=10 * USD).wallet
    make.account("bob@example.com", status=status)
    with refused(database, AccountNotActive, "recipient"):
        ledger.transfer(wallet.id, "bob@example.com", 5 * USD)


@pytest.mark.parametrize("status", ["closed", "frozen", "restricted"])
def test_transfer_from_inactive_account(make, database, status):
    wallet = make.account(credit=10 * USD, status=status).wallet
    make.account("bob@example.com")
    with refused(database, AccountNotActive, "your account"):
        ledger.transfer(wallet.id, "bob@example.com", 5 * USD)


def test_transfer_to_yourself(make, database):
    account = make.account("alice@example.com", credit=10 * USD)
    wallet = account.wallet
    for to in ("alice@example.com", " ALICE@example.com ", wallet.account_number, wallet.id):
        with refused(database, ValidationError, "yourself"):
            ledger.transfer(wallet.id, to, 5 * USD)


def test_transfer_across_currencies(make, database):
    wallet = make.account(credit=10 * USD).wallet
    make.account("eur@example.com", currency="EUR")
    with refused(database, ValidationError, "currency"):
        ledger.transfer(wallet.id, "eur@example.com", 5 * USD)


def test_transfer_below_minimum(make, database):
    wallet = make.account(credit=10 * USD).wallet
    make.account("bob@example.com")
    with refused(database, LimitExceeded, "smallest transfer is 1.000000"):
        ledger.transfer(wallet.id, "bob@example.com", 1 * USD - 1)
    ledger.transfer(wallet.id, "bob@example.com", 1 * USD)  # the minimum itself is fine


def test_transfer_above_maximum(make, database):
    wallet = make.account(credit=100 * USD).wallet
    make.account("bob@example.com")
    with refused(database, LimitExceeded, "largest transfer is 20.000000"):
        ledger.transfer(wallet.id, "bob@example.com", 20 * USD + 1)
    ledger.transfer(wallet.id, "bob@example.com", 20 * USD)  # the maximum itself is fine


def test_transfer_past_the_daily_limit(make, database, clock):
    wallet = make.account(credit=200 * USD).wallet
    make.account("bob@example.com")
    make.account("carol@example.com")
    ledger.transfer(wallet.id, "bob@example.com", 20 * USD)
    clock.advance(hours=6)
    ledger.transfer(wallet.id, "carol@example.com", 20 * USD)
    clock.advance(hours=6)
    with refused(database, LimitExceeded, "50.000000 in 24 hours"):
        ledger.transfer(wallet.id, "bob@example.com", 10 * USD + 1)
    ledger.transfer(wallet.id, "bob@example.com", 10 * USD)  # exactly up to the limit
    with refused(database, LimitExceeded, "24 hours"):
        ledger.transfer(wallet.id, "carol@example.com", 1 * USD)
    # 24 hours after the first transfer, its 20.00 no longer counts.
    clock.advance(hours=12)
    ledger.transfer(wallet.id, "carol@example.com", 20 * USD)
    with refused(database, LimitExceeded, "24 hours"):
        ledger.transfer(wallet.id, "carol@example.com", 1 * USD)


def test_transfer_more_than_available(make, database):
    wallet = make.account(credit=10 * USD).wallet
    make.account("bob@example.com")
    ledger.reserve(wallet.id, "call-1", 6 * USD)
    with refused(database, InsufficientCredit):
        ledger.transfer(wallet.id, "bob@example.com", 5 * USD)


def test_transfer_from_missing_account(make, database):
    make.account("bob@example.com")
    with refused(database, NotFound):
        ledger.transfer(999_999, "bob@example.com", 5 * USD)
    with refused(database, NotFound):
        ledger.transfer("nobody@example.com", "bob@example.com", 5 * USD)


# ---------------------------------------------------------------- refund debits


def test_debit_missing_lot(make, database):
    make.account(credit=10 * USD)
    with refused(database, NotFound):
        ledger.debit_lot_for_refund(999_999, 1 * USD, key="refund-1")


@pytest.mark.parametrize("key", [None, "", "k" * 201])
def test_debit_bad_key(make, database, key):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase").lot
    with refused(database, ValidationError):
        ledger.debit_lot_for_refund(lot.id, 1 * USD, key=key)


def test_debit_more_than_the_lot_has(make, database):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase").lot
    ledger.grant(wallet.id, 10 * USD, "purchase")
    with refused(database, InsufficientCredit):
        ledger.debit_lot_for_refund(lot.id, 10 * USD + 1, key="refund-1")


def test_debit_credit_held_by_a_call(make, database):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase").lot
    ledger.reserve(wallet.id, "call-1", 8 * USD)
    with refused(database, InsufficientCredit, "held"):
        ledger.debit_lot_for_refund(lot.id, 3 * USD, key="refund-1")


def test_debit_expired_lot(make, database, clock):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=clock.now() + timedelta(days=1)).lot
    clock.advance(days=2)
    # The expiry job has not run yet: the refund must still not take expired credit.
    with refused(database, InsufficientCredit, "expired"):
        ledger.debit_lot_for_refund(lot.id, 1 * USD, key="refund-1")


# ---------------------------------------------------------------- reads


@pytest.mark.parametrize(
    "call",
    [
        lambda w: ledger.statement(w, after="abc"),
        lambda w: ledger.statement(w, after="-1"),
        lambda w: ledger.statement(w, after="1.5"),
        lambda w: ledger.statement(w, after="\u00b2"),
        lambda w: ledger.statement(w, after="9" * 40),
        lambda w: ledger.statement(w, after=12),
        lambda w: ledger.statement(w, limit=0),
        lambda w: ledger.statement(w, limit=501),
    ],
    ids=["letters", "negative", "decimal", "superscript", "huge", "int", "limit-0", "limit-501"],
)
def test_statement_bad_cursor_or_limit(make, database, call: Callable[[int], Any]):
    wallet = make.account(credit=10 * USD).wallet
    with refused(database, ValidationError):
        call(wallet.id)


def test_lookups_of_missing_accounts(make, database):
    make.account()
    for call in (ledger.balance, ledger.get_wallet, ledger.lots, ledger.statement):
        with refused(database, NotFound):
            call("nobody@example.com")
