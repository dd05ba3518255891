"""Round trips per hot-path call: authorising and completing a call must stay a handful of SQL statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from credits import db
from credits.ledger import service as ledger

USD = 1_000_000
RESERVE_MAX = 4
SETTLE_MAX = 8
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


@contextmanager
def counting() -> Iterator[list[str]]:
    """Collect the statements the engine sends, without transaction control (BEGIN [IMMEDIATE], COMMIT, ...)."""
    statements: list[str] = []
    engine = db.get().engine

    def before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001 - event signature
        if not statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            statements.append(statement)

    def raw(statement: str) -> None:  # the PostgreSQL fast path's statements (credits.db.RawTransaction)
        before(None, None, statement, None, None, False)

    event.listen(engine, "before_cursor_execute", before)
    db.raw_statement_hooks.append(raw)
    try:
        yield statements
    finally:
        db.raw_statement_hooks.remove(raw)
        event.remove(engine, "before_cursor_execute", before)


def _report(statements: list[str]) -> str:
    return "\n".join(f"{i + 1}. {' '.join(s.split())[:160]}" for i, s in enumerate(statements))


@pytest.fixture
def wallet_id(make) -> int:
    wallet = make.account().wallet
    # Several lots, so that settle draws across more than one.
    for source in ("purchase", "promo", "credit_note"):
        ledger.grant(wallet.id, 1 * USD, source)
    return wallet.id


def test_counter_sees_statements(wallet_id):
    with counting() as statements:
        ledger.balance(wallet_id)
    assert len(statements) == 1


def test_reserve_statement_count(wallet_id):
    with counting() as statements:
        hold = ledger.reserve(wallet_id, "call-1", 2 * USD)
    assert hold.created
    assert len(statements) <= RESERVE_MAX, _report(statements)


def test_reserve_replay_statement_count(wallet_id):
    ledger.reserve(wallet_id, "call-1", 2 * USD)
    with counting() as statements:
        assert not ledger.reserve(wallet_id, "call-1", 2 * USD).created
    assert len(statements) <= RESERVE_MAX, _report(statements)


@pytest.mark.parametrize("charge", [2_500_000, 1_500_000, 0], ids=["above-hold-three-lots", "two-lots", "zero"])
def test_settle_statement_count(wallet_id, charge):
    ledger.reserve(wallet_id, "call-1", 2 * USD)
    with counting() as statements:
        view = ledger.settle("call-1", charge)
    assert view.charged == charge
    assert len(statements) <= SETTLE_MAX, _report(statements)


def test_release_statement_count(wallet_id):
    ledger.reserve(wallet_id, "call-1", 2 * USD)
    with counting() as statements:
        ledger.release("call-1")
    assert len(statements) <= 4, _report(statements)
