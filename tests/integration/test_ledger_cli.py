"""Operator CLI for the ledger: `ledger audit`, `ledger grant` and `accounts create` (flask --app wsgi ...)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits.ledger import service as ledger
from tests.conftest import row_counts

USD = 1_000_000


def _sql(database: Any, statement: str, **params: Any) -> None:
    """Change data behind the services' back (triggers off on PostgreSQL, as an attacker or a bad script would)."""
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":
            conn.execute(sa.text("SET session_replication_role = replica"))
        conn.execute(sa.text(statement), params)
        if database.dialect == "postgresql":
            conn.execute(sa.text("SET session_replication_role = DEFAULT"))
        conn.commit()


def _busy_ledger(make: Any) -> Any:
    alice = make.account("alice@example.com", credit=20 * USD)
    make.account("bob@example.com", credit=5 * USD, source="promo")
    ledger.reserve(alice.wallet.id, "call-1", 3 * USD)
    ledger.settle("call-1", 2 * USD)
    ledger.reserve(alice.wallet.id, "call-2", 3 * USD)
    ledger.transfer(alice.wallet.id, "bob@example.com", 4 * USD)
    return alice


# ---------------------------------------------------------------- ledger audit


def test_audit_clean_ledger(runner, make):
    _busy_ledger(make)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 0, result.output
    assert "no violations" in result.output


def test_audit_empty_ledger(runner):
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 0
    assert "no violations" in result.output


def test_audit_reports_a_wallet_balance_changed_behind_the_ledger(runner, make, database):
    alice = _busy_ledger(make)
    _sql(database, "UPDATE wallets SET balance = balance + 1000000 WHERE id = :id", id=alice.wallet.id)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert "violation" in result.output
    line = next(x for x in result.output.splitlines() if alice.wallet.account_number in x)
    assert "balance 15000000" in line and "sum of lots 14000000" in line and "sum of postings 14000000" in line
    bob = ledger.get_wallet("bob@example.com")
    assert bob.account_number not in result.output


def test_audit_reports_held_that_disagrees_with_active_holds(runner, make, database):
    alice = _busy_ledger(make)
    _sql(database, "UPDATE wallets SET held = 0 WHERE id = :id", id=alice.wallet.id)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert f"wallet {alice.wallet.account_number}" in result.output
    assert "held 0, active holds 3000000" in result.output


def test_audit_reports_a_lot_changed_behind_the_ledger(runner, make, database):
    alice = _busy_ledger(make)
    lot = ledger.lots(alice.wallet.id)[0]
    _sql(database, "UPDATE lots SET remaining = remaining - 1 WHERE id = :id", id=lot.id)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert f"lot {lot.id}: remaining {lot.remaining - 1} but its postings sum to {lot.remaining}" in result.output
    assert f"wallet {alice.wallet.account_number}" in result.output


def test_audit_reports_an_unbalanced_transaction(runner, make, database):
    alice = _busy_ledger(make)
    tx_id = ledger.transactions_of(alice.wallet.id)[0]
    _sql(database, "INSERT INTO postings (tx_id, system_account, amount) VALUES (:tx, 'promotions', 7)", tx=tx_id)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert f"journal transaction {tx_id} sums to 7, not zero" in result.output


def test_audit_reports_a_posting_to_another_wallets_lot(runner, make, database):
    alice = _busy_ledger(make)
    bob = ledger.get_wallet("bob@example.com")
    lot = ledger.lots(alice.wallet.id)[0]
    tx_id = ledger.transactions_of(alice.wallet.id)[0]
    _sql(database, "INSERT INTO postings (tx_id, wallet_id, lot_id, amount) VALUES (:tx, :w, :lot, 5)",
         tx=tx_id, w=bob.id, lot=lot.id)
    _sql(database, "INSERT INTO postings (tx_id, system_account, amount) VALUES (:tx, 'promotions', -5)", tx=tx_id)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert f"names lot {lot.id} of wallet {alice.wallet.id} but posts to {bob.id}" in result.output


def test_audit_reports_an_inconsistent_hold(runner, make, database):
    _busy_ledger(make)
    _sql(database, "UPDATE holds SET status = 'released' WHERE key = 'call-1'")
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert "status released inconsistent" in result.output


def test_audit_reports_a_stale_late_next_expiry(runner, make, database, clock):
    alice = _busy_ledger(make)
    _sql(database, "UPDATE wallets SET next_expiry_at = :t WHERE id = :id",
         t=datetime(2099, 1, 1, tzinfo=UTC).replace(tzinfo=None) if database.dialect == "sqlite"
         else datetime(2099, 1, 1, tzinfo=UTC), id=alice.wallet.id)
    result = runner.invoke(args=["ledger", "audit"])
    assert result.exit_code == 1
    assert f"wallet {alice.wallet.account_number}: next_expiry_at" in result.output


# ---------------------------------------------------------------- accounts create


def test_accounts_create_prints_the_account_number_last(runner):
    result = runner.invoke(args=["accounts", "create", "--email", "New@Example.com", "--password", "a long password"])
    assert result.exit_code == 0, result.output
    number = result.output.strip().splitlines()[-1]
    assert number.isdigit() and len(number) == 10
    wallet = ledger.get_wallet("new@example.com")
    assert (wallet.account_number, wallet.currency, wallet.balance) == (number, "USD", 0)


def test_accounts_create_refuses_a_duplicate_and_a_short_password(runner, database):
    assert runner.invoke(args=["accounts", "create", "--email", "a@example.com", "--password", "a long password"]
                         ).exit_code == 0
    before = row_counts(database)
    duplicate = runner.invoke(args=["accounts", "create", "--email", "A@example.com", "--password", "another one"])
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.output
    short = runner.invoke(args=["accounts", "create", "--email", "b@example.com", "--password", "short"])
    assert short.exit_code == 1
    assert "at least 8 characters" in short.output
    assert row_counts(database) == before


# ---------------------------------------------------------------- ledger grant


@pytest.mark.parametrize("by", ["email", "number"])
def test_ledger_grant(runner, make, clock, by):
    account = make.account("alice@example.com")
    name = "alice@example.com" if by == "email" else account.wallet.account_number
    result = runner.invoke(args=["ledger", "grant", "--account", name, "--amount", "10.00",
                                 "--reason", "goodwill after outage"])
    assert result.exit_code == 0, result.output
    assert "granted 10.000000" in result.output
    view = ledger.balance(account.wallet.id)
    assert view.balance == 10 * USD
    (lot,) = ledger.lots(account.wallet.id)
    assert (lot.source, lot.granted) == ("credit_note", 10 * USD)
    assert lot.expires_at == clock.now() + timedelta(days=180)  # CREDITS_CREDIT_VALIDITY_DAYS
    line = ledger.statement(account.wallet.id).lines[0]
    assert (line.kind, line.amount, line.memo) == ("grant", 10 * USD, "goodwill after outage")
    assert ledger.system_balances()["promotions"] == -10 * USD


def test_ledger_grant_with_expiry_and_promo_source_is_audit_logged(runner, make, database):
    account = make.account("alice@example.com")
    result = runner.invoke(args=["ledger", "grant", "--account", "alice@example.com", "--amount", "2.50",
                                 "--reason", "welcome", "--expires-at", "2027-01-31T00:00:00Z", "--source", "promo"])
    assert result.exit_code == 0, result.output
    (lot,) = ledger.lots(account.wallet.id)
    assert (lot.source, lot.granted, lot.expires_at) == ("promo", 2_500_000, datetime(2027, 1, 31, tzinfo=UTC))
    with database.engine.connect() as conn:
        actions = conn.execute(sa.text("SELECT actor, action, subject FROM audit_log")).all()
    assert [tuple(a) for a in actions] == [("operator:cli", "ledger.grant", f"wallet:{account.wallet.id}")]
    assert runner.invoke(args=["audit", "verify"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amount", "10.001"], "at most 2 decimals"),
        (["--amount", "abc"], "not a valid amount"),
        (["--amount", "-5"], "negative"),
        (["--amount", "0"], "greater than zero"),
        (["--amount", "10000000"], "maximum"),
        (["--account", "nobody@example.com"], "no account"),
        (["--account", "0000000000"], "no account"),
        (["--reason", "   "], "reason is required"),
        (["--expires-at", "2026-11-01T00:00:00Z"], "already be expired"),
        (["--expires-at", "2027-01-01T00:00:00"], "timezone"),
        (["--expires-at", "next tuesday"], "ISO-8601"),
    ],
    ids=["decimals", "letters", "negative", "zero", "too-large", "no-email", "no-number", "no-reason",
         "expired", "naive", "not-a-time"],
)
def test_ledger_grant_refuses_bad_input(runner, make, database, args, message):
    make.account("alice@example.com", credit=1 * USD)
    options = {"--account": "alice@example.com", "--amount": "10.00", "--reason": "goodwill"}
    options.update(dict(zip(args[::2], args[1::2], strict=True)))
    before = row_counts(database)
    result = runner.invoke(args=["ledger", "grant", *[x for pair in options.items() for x in pair]])
    assert result.exit_code != 0
    assert message in result.output
    assert row_counts(database) == before
    assert ledger.balance("alice@example.com").balance == 1 * USD
