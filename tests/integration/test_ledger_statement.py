"""Statement: one line per journal transaction, newest first, keyset pagination with a correct running balance."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from credits.errors import ValidationError
from credits.ledger import service as ledger

USD = 1_000_000


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"transfer_daily_limit": "100000.00"}


def _busy_wallet(make: Any, clock: Any) -> tuple[int, list[tuple[str, int]]]:
    """A wallet with every kind of line; return its id and the expected (kind, amount) lines, oldest first."""
    now = clock.now()
    alice = make.account("alice@example.com").wallet
    make.account("bob@example.com", credit=50 * USD)
    expected: list[tuple[str, int]] = []
    lot = ledger.grant(alice.id, 20 * USD, "purchase").lot
    expected.append(("grant", 20 * USD))
    ledger.grant(alice.id, 10 * USD, "promo", expires_at=now + timedelta(days=2))
    expected.append(("grant", 10 * USD))
    for i in range(8):
        clock.advance(minutes=1)
        ledger.reserve(alice.id, f"call-{i}", 2 * USD)
        ledger.settle(f"call-{i}", 100_000 * (i + 1))
        expected.append(("settle", -100_000 * (i + 1)))
    ledger.reserve(alice.id, "call-free", 1 * USD)
    ledger.settle("call-free", 0)  # charges nothing: no line
    ledger.reserve(alice.id, "call-dropped", 1 * USD)
    ledger.release("call-dropped")  # no line either
    ledger.transfer("bob@example.com", alice.id, 4 * USD)
    expected.append(("transfer", 4 * USD))
    ledger.transfer(alice.id, "bob@example.com", 1 * USD + 500_000)
    expected.append(("transfer", -1_500_000))
    ledger.debit_lot_for_refund(lot.id, 2 * USD, key="refund-1")
    expected.append(("refund_debit", -2 * USD))
    clock.advance(days=3)
    ledger.expire_lots()
    # The promo lot expires first, so every draw took from it: 10.00 - 3.60 charged - 1.50 sent.
    expected.append(("expiry", -4_900_000))
    for i in range(6):
        ledger.grant(alice.id, 1 * USD + i, "credit_note")
        expected.append(("grant", 1 * USD + i))
    return alice.id, expected


def _pages(wallet_id: int, limit: int) -> list[ledger.StatementPage]:
    pages = [ledger.statement(wallet_id, limit=limit)]
    while pages[-1].next_cursor is not None:
        pages.append(ledger.statement(wallet_id, limit=limit, after=pages[-1].next_cursor))
        assert len(pages) < 100, "pagination does not end"
    return pages


@pytest.mark.parametrize("limit", [1, 2, 5, 7, 22, 500])
def test_pages_cover_every_line_once_with_running_balance(make, clock, limit):
    wallet_id, expected = _busy_wallet(make, clock)
    pages = _pages(wallet_id, limit)
    lines = [line for page in pages for line in page.lines]

    assert [(line.kind, line.amount) for line in lines] == list(reversed(expected))
    assert len({line.tx_id for line in lines}) == len(lines)
    assert [line.tx_id for line in lines] == sorted((line.tx_id for line in lines), reverse=True)
    assert set(ledger.transactions_of(wallet_id)) == {line.tx_id for line in lines}
    assert all(1 <= len(page.lines) <= limit for page in pages)
    assert all(len(page.lines) == limit for page in pages[:-1])
    assert pages[-1].next_cursor is None
    assert len(pages) == -(-len(expected) // limit)

    running = 0
    for line in reversed(lines):
        running += line.amount
        assert line.balance_after == running, line
    assert lines[0].balance_after == ledger.balance(wallet_id).balance


def test_empty_statement(make):
    wallet = make.account().wallet
    page = ledger.statement(wallet.id)
    assert (page.lines, page.next_cursor) == ([], None)


def test_exactly_one_full_page_has_no_next_cursor(make):
    wallet = make.account().wallet
    for _ in range(3):
        ledger.grant(wallet.id, 1 * USD, "purchase")
    page = ledger.statement(wallet.id, limit=3)
    assert len(page.lines) == 3 and page.next_cursor is None


def test_statement_by_email_and_account_number(make):
    account = make.account("alice@example.com", credit=5 * USD)
    by_id = ledger.statement(account.wallet.id)
    assert ledger.statement("alice@example.com") == by_id
    assert ledger.statement(account.wallet.account_number) == by_id


def test_other_wallets_lines_never_show(make):
    alice = make.account(credit=5 * USD).wallet
    bob = make.account(credit=7 * USD).wallet
    ledger.reserve(bob.id, "bob-call", 1 * USD)
    ledger.settle("bob-call", 1 * USD)
    assert [line.amount for line in ledger.statement(alice.id).lines] == [5 * USD]


@pytest.mark.parametrize("cursor", ["x", "-5", "1e3", " 7", "\u0663", "1" * 19])
def test_bad_cursor(make, cursor):
    wallet = make.account(credit=5 * USD).wallet
    with pytest.raises(ValidationError, match="cursor"):
        ledger.statement(wallet.id, after=cursor)
