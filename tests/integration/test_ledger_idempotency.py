"""Idempotency: a replay returns the first result and moves nothing; a replay with other parameters is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits.errors import Conflict, IdempotencyConflict
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit
from tests.conftest import table_snapshot

USD = 1_000_000


def test_grant_replay_returns_first_lot_and_moves_nothing(make, database, clock):
    wallet = make.account().wallet
    first = ledger.grant(wallet.id, 10 * USD, "purchase", key="pay-1", reference="pi_1")
    assert first.created
    before = table_snapshot(database)
    clock.advance(minutes=5)  # a later replay must not even get a new default expiry
    again = ledger.grant(wallet.id, 10 * USD, "purchase", key="pay-1", reference="pi_1")
    assert not again.created
    assert again.lot == first.lot
    assert table_snapshot(database) == before
    assert ledger.balance(wallet.id).balance == 10 * USD


@pytest.mark.parametrize(
    "change",
    [{"amount": 11 * USD}, {"source": "promo"}, {"wallet": "other"}],
    ids=["amount", "source", "wallet"],
)
def test_grant_replay_with_other_parameters_conflicts(make, database, change):
    wallet = make.account().wallet
    other = make.account().wallet
    ledger.grant(wallet.id, 10 * USD, "purchase", key="pay-1")
    before = table_snapshot(database)
    target = other.id if change.get("wallet") == "other" else wallet.id
    with pytest.raises(IdempotencyConflict):
        ledger.grant(target, change.get("amount", 10 * USD), change.get("source", "purchase"), key="pay-1")
    assert table_snapshot(database) == before


def test_reserve_replay(make, database):
    wallet = make.account(credit=10 * USD).wallet
    first = ledger.reserve(wallet.id, "call-1", 3 * USD)
    assert first.created and first.status == "active"
    before = table_snapshot(database)
    again = ledger.reserve(wallet.id, "call-1", 3 * USD)
    assert not again.created
    assert (again.id, again.amount, again.status) == (first.id, first.amount, "active")
    assert table_snapshot(database) == before
    assert ledger.balance(wallet.id).available == 7 * USD


def test_reserve_replay_when_wallet_has_no_more_available(make, database):
    wallet = make.account(credit=3 * USD).wallet
    first = ledger.reserve(wallet.id, "call-1", 3 * USD)
    before = table_snapshot(database)
    again = ledger.reserve(wallet.id, "call-1", 3 * USD)
    assert (again.id, again.created) == (first.id, False)
    assert table_snapshot(database) == before


def test_reserve_replay_after_settle_returns_the_settled_hold(make, database):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    ledger.settle("call-1", 2 * USD)
    before = table_snapshot(database)
    again = ledger.reserve(wallet.id, "call-1", 3 * USD)
    assert (again.created, again.status, again.charged) == (False, "settled", 2 * USD)
    assert table_snapshot(database) == before


@pytest.mark.parametrize("change", ["amount", "wallet"])
def test_reserve_replay_with_other_parameters_conflicts(make, database, change):
    wallet = make.account(credit=10 * USD).wallet
    other = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    before = table_snapshot(database)
    with pytest.raises(IdempotencyConflict):
        if change == "amount":
            ledger.reserve(wallet.id, "call-1", 4 * USD)
        else:
            ledger.reserve(other.id, "call-1", 3 * USD)
    assert table_snapshot(database) == before


@pytest.mark.parametrize("charge", [0, 2 * USD, 3 * USD, 5 * USD], ids=["zero", "below", "equal", "above"])
def test_settle_replay(make, database, charge):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    first = ledger.settle("call-1", charge)
    assert first.created and first.status == "settled" and first.charged == charge
    before = table_snapshot(database)
    again = ledger.settle("call-1", charge)
    assert not again.created
    assert (again.id, again.status, again.charged, again.shortfall) == (first.id, "settled", charge, 0)
    assert table_snapshot(database) == before
    assert ledger.balance(wallet.id).balance == 10 * USD - charge


def test_settle_replay_with_shortfall(make, database):
    wallet = make.account(credit=4 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    first = ledger.settle("call-1", 6 * USD)
    assert (first.charged, first.shortfall) == (4 * USD, 2 * USD)
    before = table_snapshot(database)
    again = ledger.settle("call-1", 6 * USD)
    assert (again.created, again.charged, again.shortfall) == (False, 4 * USD, 2 * USD)
    assert table_snapshot(database) == before


def test_settle_replay_with_other_amount_conflicts(make, database):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    ledger.settle("call-1", 2 * USD)
    before = table_snapshot(database)
    with pytest.raises(IdempotencyConflict):
        ledger.settle("call-1", 1 * USD)
    assert table_snapshot(database) == before


def test_release_replay(make, database):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    first = ledger.release("call-1")
    assert first.created and first.status == "released"
    before = table_snapshot(database)
    again = ledger.release("call-1")
    assert (again.id, again.status, again.created, again.charged) == (first.id, "released", False, None)
    assert table_snapshot(database) == before
    assert ledger.balance(wallet.id).available == 10 * USD


def test_release_after_settle_and_settle_after_release_conflict(make, database):
    wallet = make.account(credit=10 * USD).wallet
    ledger.reserve(wallet.id, "call-1", 3 * USD)
    ledger.settle("call-1", 1 * USD)
    ledger.reserve(wallet.id, "call-2", 3 * USD)
    ledger.release("call-2")
    before = table_snapshot(database)
    with pytest.raises(Conflict):
        ledger.release("call-1")
    with pytest.raises(Conflict):
        ledger.settle("call-2", 1 * USD)
    assert table_snapshot(database) == before


def test_transfer_replay(make, database):
    sender = make.account(credit=50 * USD).wallet
    recipient = make.account("bob@example.com").wallet
    first = ledger.transfer(sender.id, "bob@example.com", 5 * USD, key="tr-1")
    assert first.created
    before = table_snapshot(database)
    again = ledger.transfer(sender.id, "bob@example.com", 5 * USD, key="tr-1")
    assert not again.created
    assert (again.id, again.tx_id, again.amount, again.to_account) == (
        first.id, first.tx_id, first.amount, recipient.account_number)
    # The same recipient named by account number is the same request.
    third = ledger.transfer(sender.id, recipient.account_number, 5 * USD, key="tr-1")
    assert (third.id, third.created) == (first.id, False)
    assert table_snapshot(database) == before
    assert ledger.balance(recipient.id).balance == 5 * USD


@pytest.mark.parametrize("change", ["amount", "recipient", "sender"])
def test_transfer_replay_with_other_parameters_conflicts(make, database, change):
    sender = make.account(credit=50 * USD).wallet
    make.account("bob@example.com")
    make.account("carol@example.com")
    other_sender = make.account(credit=50 * USD).wallet
    ledger.transfer(sender.id, "bob@example.com", 5 * USD, key="tr-1")
    before = table_snapshot(database)
    args = {"amount": (sender.id, "bob@example.com", 6 * USD),
            "recipient": (sender.id, "carol@example.com", 5 * USD),
            "sender": (other_sender.id, "bob@example.com", 5 * USD)}[change]
    with pytest.raises(IdempotencyConflict):
        ledger.transfer(*args, key="tr-1")
    assert table_snapshot(database) == before


def test_debit_lot_for_refund_replay(make, database):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase", key="pay-1").lot
    tx_id = ledger.debit_lot_for_refund(lot.id, 4 * USD, key="refund-1")
    before = table_snapshot(database)
    assert ledger.debit_lot_for_refund(lot.id, 4 * USD, key="refund-1") == tx_id
    assert table_snapshot(database) == before
    assert ledger.balance(wallet.id).balance == 6 * USD
    assert ledger.system_balances()["refunds"] == 4 * USD


@pytest.mark.parametrize("change", ["amount", "lot"])
def test_debit_lot_for_refund_replay_with_other_parameters_conflicts(make, database, change):
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase").lot
    other = ledger.grant(wallet.id, 10 * USD, "purchase").lot
    ledger.debit_lot_for_refund(lot.id, 4 * USD, key="refund-1")
    before = table_snapshot(database)
    with pytest.raises(IdempotencyConflict):
        if change == "amount":
            ledger.debit_lot_for_refund(lot.id, 3 * USD, key="refund-1")
        else:
            ledger.debit_lot_for_refund(other.id, 4 * USD, key="refund-1")
    assert table_snapshot(database) == before


def test_a_key_used_by_one_kind_of_movement_conflicts_for_another(make, database):
    """Journal keys are one namespace: reuse across kinds is a clear conflict, never a database crash."""
    sender = make.account(credit=50 * USD).wallet
    make.account("bob@example.com")
    lot = ledger.grant(sender.id, 10 * USD, "purchase", key="k-grant").lot
    ledger.transfer(sender.id, "bob@example.com", 5 * USD, key="k-transfer")
    ledger.debit_lot_for_refund(lot.id, 1 * USD, key="k-refund")
    before = table_snapshot(database)
    for key in ("k-transfer", "k-refund"):
        with pytest.raises(IdempotencyConflict):
            ledger.grant(sender.id, 10 * USD, "purchase", key=key)
    for key in ("k-grant", "k-refund"):
        with pytest.raises(IdempotencyConflict):
            ledger.transfer(sender.id, "bob@example.com", 5 * USD, key=key)
    for key in ("k-grant", "k-transfer"):
        with pytest.raises(IdempotencyConflict):
            ledger.debit_lot_for_refund(lot.id, 1 * USD, key=key)
    assert table_snapshot(database) == before


def test_replays_leave_the_ledger_consistent(make, clock):
    wallet = make.account().wallet
    make.account("bob@example.com")
    for _ in range(3):
        lot = ledger.grant(wallet.id, 20 * USD, "purchase", key="pay-1").lot
        ledger.reserve(wallet.id, "call-1", 2 * USD)
        ledger.settle("call-1", 1 * USD)
        ledger.reserve(wallet.id, "call-2", 2 * USD)
        ledger.release("call-2")
        ledger.transfer(wallet.id, "bob@example.com", 3 * USD, key="tr-1")
        ledger.debit_lot_for_refund(lot.id, 4 * USD, key="refund-1")
        clock.advance(timedelta(seconds=1))
    assert ledger.balance(wallet.id).balance == 20 * USD - 1 * USD - 3 * USD - 4 * USD
    report = run_audit()
    assert report.ok, report.text()
