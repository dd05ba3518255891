"""Credit transfers: by email or account number, expiry kept from the lots drawn from, statements, limits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits.errors import InsufficientCredit, LimitExceeded
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit
from tests.conftest import row_counts

USD = 1_000_000
DAY = timedelta(days=1)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"transfer_min": "0.50", "transfer_max": "30.00", "transfer_daily_limit": "40.00"}


def _audit_clean() -> None:
    report = run_audit()
    assert report.ok, report.text()


def test_transfer_by_email(make, clock):
    alice = make.account("alice@example.com", credit=20 * USD)
    bob = make.account("bob@example.com")
    view = ledger.transfer("alice@example.com", "Bob@Example.com ", 7 * USD)
    assert view.created
    assert (view.from_wallet_id, view.to_wallet_id, view.amount) == (alice.wallet.id, bob.wallet.id, 7 * USD)
    assert (view.from_account, view.to_account) == (alice.wallet.account_number, bob.wallet.account_number)
    assert view.created_at == clock.now()
    assert ledger.balance(alice.wallet.id).balance == 13 * USD
    assert ledger.balance(bob.wallet.id).balance == 7 * USD
    _audit_clean()


def test_transfer_by_account_number(make):
    alice = make.account(credit=20 * USD)
    bob = make.account()
    view = ledger.transfer(alice.wallet.account_number, bob.wallet.account_number, 12 * USD + 340_000)
    assert view.to_wallet_id == bob.wallet.id
    assert ledger.balance(alice.wallet.account_number).balance == 7 * USD + 660_000
    assert ledger.balance(bob.wallet.account_number).balance == 12 * USD + 340_000
    _audit_clean()


def test_recipient_lots_keep_the_expiry_of_the_lots_drawn_from(make, clock, database):
    now = clock.now()
    alice = make.account().wallet
    bob = make.account("bob@example.com").wallet
    late = ledger.grant(alice.id, 5 * USD, "purchase", expires_at=now + 30 * DAY).lot
    soon_paid = ledger.grant(alice.id, 4 * USD, "purchase", expires_at=now + 10 * DAY).lot
    clock.advance(seconds=1)
    soon_promo = ledger.grant(alice.id, 3 * USD, "promo", expires_at=now + 10 * DAY).lot
    soonest = ledger.grant(alice.id, 1 * USD, "credit_note", expires_at=now + 2 * DAY).lot

    ledger.transfer(alice.id, "bob@example.com", 10 * USD)

    # Draw order: soonest expiry; at equal expiry promo before paid; then oldest.
    expected = [(soonest, 1 * USD), (soon_promo, 3 * USD), (soon_paid, 4 * USD), (late, 2 * USD)]
    received = sorted(ledger.lots(bob.id, include_empty=True), key=lambda v: v.id)
    assert [(v.source, v.granted, v.remaining, v.expires_at) for v in received] == [
        ("transfer_in", part, part, origin.expires_at) for origin, part in expected]
    left = {v.id: v.remaining for v in ledger.lots(alice.id, include_empty=True)}
    assert left == {soonest.id: 0, soon_promo.id: 0, soon_paid.id: 0, late.id: 3 * USD}
    with database.engine.connect() as conn:
        origins = conn.execute(sa.text(
            "SELECT origin_lot_id FROM lots WHERE wallet_id = :w ORDER BY id"), {"w": bob.id}).scalars().all()
    assert origins == [origin.id for origin, _ in expected]
    assert ledger.balance(bob.id).next_expiry_at == now + 2 * DAY
    assert ledger.balance(alice.id).next_expiry_at == now + 30 * DAY
    _audit_clean()


def test_transferred_credit_expires_with_its_origin(make, clock):
    now = clock.now()
    alice = make.account().wallet
    bob = make.account("bob@example.com").wallet
    ledger.grant(alice.id, 5 * USD, "purchase", expires_at=now + 3 * DAY)
    ledger.grant(bob.id, 2 * USD, "purchase", expires_at=now + 300 * DAY)
    ledger.transfer(alice.id, "bob@example.com", 4 * USD)
    clock.advance(days=4)
    result = ledger.expire_lots()
    assert result.amount == 5 * USD  # alice's 1.00 left and bob's 4.00 received
    assert ledger.balance(bob.id).balance == 2 * USD
    assert ledger.balance(alice.id).balance == 0
    assert ledger.system_balances()["breakage"] == 5 * USD
    _audit_clean()


def test_both_statements_show_the_transfer(make):
    alice = make.account("alice@example.com", credit=20 * USD)
    bob = make.account("bob@example.com", credit=1 * USD)
    view = ledger.transfer(alice.wallet.id, "bob@example.com", 6 * USD)
    sent = ledger.statement(alice.wallet.id).lines
    received = ledger.statement(bob.wallet.id).lines
    assert (sent[0].tx_id, sent[0].kind, sent[0].amount, sent[0].balance_after) == (
        view.tx_id, "transfer", -6 * USD, 14 * USD)
    assert (received[0].tx_id, received[0].kind, received[0].amount, received[0].balance_after) == (
        view.tx_id, "transfer", 6 * USD, 7 * USD)
    for line in (sent[0], received[0]):
        assert alice.wallet.account_number in line.memo and bob.wallet.account_number in line.memo
    assert [line.kind for line in sent] == ["transfer", "grant"]
    assert [line.kind for line in received] == ["transfer", "grant"]


def test_transfer_only_uses_available_credit(make):
    alice = make.account(credit=10 * USD).wallet
    bob = make.account("bob@example.com").wallet
    ledger.reserve(alice.id, "call-1", 6 * USD)
    with pytest.raises(InsufficientCredit):
        ledger.transfer(alice.id, "bob@example.com", 4 * USD + 1)
    ledger.transfer(alice.id, "bob@example.com", 4 * USD)
    assert ledger.balance(alice.id).available == 0
    # The call can still be charged in full.
    assert ledger.settle("call-1", 6 * USD).shortfall == 0
    assert ledger.balance(alice.id).balance == 0
    assert ledger.balance(bob.id).balance == 4 * USD
    _audit_clean()


def test_transfer_never_moves_expired_credit(make, clock, database):
    now = clock.now()
    alice = make.account().wallet
    make.account("bob@example.com")
    ledger.grant(alice.id, 8 * USD, "purchase", expires_at=now + 1 * DAY)
    ledger.grant(alice.id, 3 * USD, "purchase", expires_at=now + 90 * DAY)
    clock.advance(days=2)  # the 8.00 lot expired; the expiry job has not run
    before = row_counts(database)
    with pytest.raises(InsufficientCredit):
        ledger.transfer(alice.id, "bob@example.com", 4 * USD)
    assert row_counts(database) == before
    view = ledger.transfer(alice.id, "bob@example.com", 3 * USD)
    received = ledger.lots("bob@example.com")
    assert [(v.remaining, v.expires_at) for v in received] == [(3 * USD, now + 90 * DAY)]
    assert view.amount == 3 * USD
    # The transfer broke the expired lot on the way (as the job would have).
    assert ledger.balance(alice.id).balance == 0
    assert ledger.system_balances()["breakage"] == 8 * USD
    _audit_clean()


def test_transfer_limits(make, clock):
    alice = make.account(credit=200 * USD).wallet
    make.account("bob@example.com")
    make.account("carol@example.com")
    with pytest.raises(LimitExceeded):
        ledger.transfer(alice.id, "bob@example.com", 500_000 - 1)
    with pytest.raises(LimitExceeded):
        ledger.transfer(alice.id, "bob@example.com", 30 * USD + 1)
    ledger.transfer(alice.id, "bob@example.com", 500_000)
    ledger.transfer(alice.id, "carol@example.com", 30 * USD)
    # The daily limit counts every recipient: 30.50 sent, 9.50 left today.
    with pytest.raises(LimitExceeded):
        ledger.transfer(alice.id, "bob@example.com", 9 * USD + 500_001)
    ledger.transfer(alice.id, "bob@example.com", 9 * USD + 500_000)
    clock.advance(hours=23, minutes=59)
    with pytest.raises(LimitExceeded):
        ledger.transfer(alice.id, "bob@example.com", 500_000)
    clock.advance(minutes=1)  # exactly 24 hours later the first transfers no longer count
    ledger.transfer(alice.id, "bob@example.com", 30 * USD)
    assert ledger.balance(alice.id).balance == 200 * USD - 70 * USD
    _audit_clean()


def test_a_receiving_account_needs_no_credit_and_can_spend_it(make):
    make.account("alice@example.com", credit=10 * USD)
    bob = make.account("bob@example.com").wallet
    ledger.transfer("alice@example.com", "bob@example.com", 5 * USD)
    ledger.reserve(bob.id, "bob-call", 5 * USD)
    assert ledger.settle("bob-call", 5 * USD).charged == 5 * USD
    assert ledger.balance(bob.id).balance == 0
    _audit_clean()
