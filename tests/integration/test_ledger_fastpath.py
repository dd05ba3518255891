"""The PostgreSQL fast path of reserve and settle (credits/ledger/fastpath.py) against the general path.

The same operations on two wallets with the same lots, one with the fast path on and one with it off: the
answers and every row they leave must be the same. Then the assertion that guards a key reserved twice at the
same moment, triggered by fault injection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits import db as db_mod
from credits.errors import Conflict, IdempotencyConflict, InsufficientCredit, NotFound
from credits.ledger import fastpath
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit

pytestmark = pytest.mark.postgres
USD = 1_000_000


@contextmanager
def general_path() -> Iterator[None]:
    fastpath.ENABLED = False
    try:
        yield
    finally:
        fastpath.ENABLED = True


def outcome(fn: Any) -> Any:
    try:
        view = fn()
    except (Conflict, IdempotencyConflict, InsufficientCredit, NotFound) as exc:
        return type(exc).__name__
    return (view.amount, view.status, view.charged, view.shortfall, view.created)


def script(wallet: Any, account_number: str) -> list[Any]:
    def k(name: str) -> str:  # hold keys are unique across wallets
        return f"{wallet.id}-{name}"

    def pair(key: str, reserve: int, charge: int) -> list[Any]:
        return [outcome(lambda: ledger.reserve(wallet.id, k(key), reserve)),
                outcome(lambda: ledger.settle(k(key), charge))]

    answers: list[Any] = []
    answers += pair("a", 2 * USD, 1_500_000)             # draws from the lot expiring first, then the next
    answers += pair("b", 1 * USD, 1_200_000)             # above the hold: the rest from available credit
    answers += pair("c", 500_000, 0)                     # nothing charged
    answers.append(outcome(lambda: ledger.reserve(account_number, k("d"), 700_000)))  # by account number
    answers.append(outcome(lambda: ledger.settle(k("d"), 700_000)))
    answers.append(outcome(lambda: ledger.reserve(wallet.id, k("a"), 2 * USD)))       # replay of a settled hold
    answers.append(outcome(lambda: ledger.settle(k("a"), 1_500_000)))                 # settle replay
    answers.append(outcome(lambda: ledger.settle(k("a"), 1)))                         # another amount
    answers.append(outcome(lambda: ledger.reserve(wallet.id, k("e"), 100 * USD)))     # short of credit
    answers += pair("f", 500_000, 50 * USD)              # far above everything: shortfall to credit_loss
    answers.append(outcome(lambda: ledger.reserve(wallet.id, k("g"), 1)))             # nothing left
    return answers


def rows(wallet_id: int) -> dict[str, Any]:
    with db_mod.get().engine.connect() as conn:
        def q(sql: str) -> list[Any]:
            return [tuple(r) for r in conn.execute(sa.text(sql), {"w": wallet_id}).all()]

        return {
            "wallet": q("SELECT balance, held, next_expiry_at FROM wallets WHERE id = :w"),
            "lots": q("SELECT source, granted, remaining, expires_at FROM lots WHERE wallet_id = :w ORDER BY id"),
            "holds": q("SELECT substr(key, strpos(key, '-') + 1), amount, status, charged, shortfall, "
                       "tx_id IS NULL FROM holds WHERE wallet_id = :w ORDER BY id"),
            "postings": q("SELECT p.system_account, p.lot_id IS NULL, p.amount, j.kind, "
                          "regexp_replace(j.memo, '[0-9]+-', '') FROM postings p "
                          "JOIN journal_transactions j ON j.id = p.tx_id WHERE p.tx_id IN "
                          "(SELECT tx_id FROM holds WHERE wallet_id = :w) ORDER BY p.id"),
        }


def test_fast_and_general_paths_answer_and_write_the_same(make, clock):
    soon = clock.now() + timedelta(days=10)
    wallets = [make.account().wallet for _ in range(2)]
    for wallet in wallets:
        ledger.grant(wallet.id, 1 * USD, "purchase", expires_at=soon)
        ledger.grant(wallet.id, 2 * USD, "promo", expires_at=soon + timedelta(days=20))
        ledger.grant(wallet.id, 1 * USD, "credit_note", expires_at=soon + timedelta(days=40))
    sent: list[str] = []
    db_mod.raw_statement_hooks.append(sent.append)
    try:
        fast = script(wallets[0], wallets[0].account_number)
        assert any("INSERT INTO holds" in s for s in sent), "the fast path did not run"
        sent.clear()
        with general_path():
            slow = script(wallets[1], wallets[1].account_number)
        assert sent == [], "the general path used the fast one"
    finally:
        db_mod.raw_statement_hooks.remove(sent.append)
    assert fast == slow
    assert "NotFound" not in fast and fast.count("InsufficientCredit") == 2
    assert fast[-2][3] > 0  # the charge far above everything was short (credit_loss)
    a, b = rows(wallets[0].id), rows(wallets[1].id)
    assert a == b
    assert run_audit().ok


def test_credit_due_to_expire_is_broken_first_by_the_general_path(make, clock):
    wallet = make.account().wallet
    ledger.grant(wallet.id, 5 * USD, "purchase", expires_at=clock.now() + timedelta(minutes=5))
    ledger.grant(wallet.id, 1 * USD, "purchase", expires_at=clock.now() + timedelta(days=5))
    clock.advance(minutes=10)  # the first lot is due; the expiry job has not run
    with pytest.raises(InsufficientCredit):
        ledger.reserve(wallet.id, "k", 2 * USD)
    assert ledger.reserve(wallet.id, "k", 1 * USD).amount == 1 * USD
    assert ledger.balance(wallet.id).balance == 1 * USD
    assert run_audit().ok


def test_a_key_reserved_at_the_same_moment_rolls_back_the_credit_taken(make, monkeypatch, caplog):
    """Fault injection: the fast path's replay check is removed, as if another transaction had inserted the
    same key just after this statement's snapshot. The assertion must roll back the credit taken."""
    wallet = make.account().wallet
    ledger.grant(wallet.id, 5 * USD, "purchase")
    first = ledger.reserve(wallet.id, "same", 1 * USD)
    blind = fastpath._RESERVE_BY_ID.replace("AND NOT EXISTS (SELECT 1 FROM holds WHERE key = %(key)s)", "")
    assert blind != fastpath._RESERVE_BY_ID
    monkeypatch.setattr(fastpath, "_RESERVE_BY_ID", blind)
    from credits import clock

    now = clock.now()
    assert fastpath.reserve(wallet.id, "same", 1 * USD, now, now + timedelta(hours=1)) is None
    view = ledger.balance(wallet.id)
    assert (view.balance, view.held) == (5 * USD, 1 * USD)  # only the first hold's credit is held
    again = ledger.reserve(wallet.id, "same", 1 * USD)
    assert (again.id, again.created) == (first.id, False)
    assert run_audit().ok


def test_a_wallet_changed_between_read_and_write_writes_nothing(make):
    """Fault injection: just before settle's write, another connection updates the wallet (as a concurrent
    movement would). The write must find the wallet's version changed and write nothing; the general path then
    settles."""
    wallet = make.account().wallet
    ledger.grant(wallet.id, 5 * USD, "purchase")
    ledger.reserve(wallet.id, "k", 1 * USD)
    done: list[bool] = []

    def hook(sql: str) -> None:
        if "xmin = CAST" in sql and not done:
            done.append(True)
            with db_mod.get().engine.begin() as conn:
                conn.execute(sa.text("UPDATE wallets SET held = held WHERE id = :w"), {"w": wallet.id})

    from credits import clock

    db_mod.raw_statement_hooks.append(hook)
    try:
        assert fastpath.settle("k", 600_000, clock.now(), "charge k") is None
    finally:
        db_mod.raw_statement_hooks.remove(hook)
    assert done
    view = ledger.balance(wallet.id)
    assert (view.balance, view.held) == (5 * USD, 1 * USD)
    settled = ledger.settle("k", 600_000)
    assert (settled.status, settled.charged) == ("settled", 600_000)
    assert ledger.balance(wallet.id).balance == 5 * USD - 600_000
    assert run_audit().ok
