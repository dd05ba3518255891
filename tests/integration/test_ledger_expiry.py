"""Lot expiry under a frozen clock, for both policies: breakage, holds made before expiry, lazy expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits.errors import InsufficientCredit
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit
from tests.conftest import table_snapshot

USD = 1_000_000
DAY = timedelta(days=1)
PER_LOT = {"expiry_policy": "per_lot"}
ROLLING = {"expiry_policy": "rolling"}
BOTH = pytest.mark.parametrize("settings_overrides", [PER_LOT, ROLLING], ids=["per_lot", "rolling"])


def _audit_clean() -> None:
    report = run_audit()
    assert report.ok, report.text()


def _breakage() -> int:
    return ledger.system_balances().get("breakage", 0)


def _remaining(wallet_id: int) -> dict[int, int]:
    return {v.id: v.remaining for v in ledger.lots(wallet_id, include_empty=True)}


@BOTH
def test_expiry_posts_breakage_once(make, clock, database):
    now = clock.now()
    wallet = make.account().wallet
    other = make.account().wallet
    soon = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 5 * DAY).lot
    late = ledger.grant(wallet.id, 4 * USD, "promo", expires_at=now + 30 * DAY).lot
    ledger.grant(other.id, 1 * USD, "credit_note", expires_at=now + 5 * DAY)

    clock.set(now + 5 * DAY - timedelta(microseconds=1))
    assert ledger.expire_lots() == ledger.ExpiryResult(0, 0, 0)  # not yet due: nothing
    clock.set(now + 5 * DAY)  # expires_at itself counts as expired

    result = ledger.expire_lots()
    assert (result.wallets, result.lots, result.amount) == (2, 2, 11 * USD)
    assert _breakage() == 11 * USD
    view = ledger.balance(wallet.id)
    assert (view.balance, view.available, view.next_expiry_at) == (4 * USD, 4 * USD, now + 30 * DAY)
    assert _remaining(wallet.id) == {soon.id: 0, late.id: 4 * USD}
    assert ledger.balance(other.id).balance == 0
    assert ledger.balance(other.id).next_expiry_at is None
    statement = ledger.statement(wallet.id).lines
    assert (statement[0].kind, statement[0].amount, statement[0].balance_after) == ("expiry", -10 * USD, 4 * USD)
    _audit_clean()

    before = table_snapshot(database)
    again = ledger.expire_lots()
    assert (again.lots, again.amount) == (0, 0)
    assert table_snapshot(database) == before
    clock.advance(days=1)
    assert ledger.expire_lots().amount == 0
    assert table_snapshot(database) == before


@BOTH
def test_hold_made_before_expiry_is_settled_in_full_after_it(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY).lot
    clock.advance(hours=23)
    ledger.reserve(wallet.id, "call-1", 6 * USD)
    clock.advance(hours=2)

    result = ledger.expire_lots()
    assert (result.lots, result.amount) == (1, 4 * USD)  # the hold keeps 6.00 of the expired lot
    assert _remaining(wallet.id) == {lot.id: 6 * USD}
    view = ledger.balance(wallet.id)
    assert (view.balance, view.held, view.available) == (6 * USD, 6 * USD, 0)
    assert ledger.expire_lots().amount == 0  # a second run keeps the protected part too
    _audit_clean()

    settled = ledger.settle("call-1", 6 * USD)
    assert (settled.charged, settled.shortfall) == (6 * USD, 0)
    assert ledger.balance(wallet.id).balance == 0
    assert ledger.system_balances()["usage_revenue"] == 6 * USD
    assert ledger.expire_lots().amount == 0
    assert _breakage() == 4 * USD
    _audit_clean()


@BOTH
@pytest.mark.parametrize("finish", ["settle-part", "release"])
def test_unprotected_remainder_breaks_on_the_next_run(make, clock, finish):
    now = clock.now()
    wallet = make.account().wallet
    lot = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY).lot
    ledger.reserve(wallet.id, "call-1", 6 * USD)
    clock.advance(days=2)
    assert ledger.expire_lots().amount == 4 * USD

    if finish == "settle-part":
        ledger.settle("call-1", 2 * USD)
        left = 4 * USD
    else:
        ledger.release("call-1")
        left = 6 * USD
    # The hold no longer protects anything: what is left of the lot is expired credit, not available.
    assert _remaining(wallet.id) == {lot.id: left}
    with pytest.raises(InsufficientCredit):
        ledger.reserve(wallet.id, "call-2", 1)

    result = ledger.expire_lots()
    assert (result.lots, result.amount) == (1, left)
    assert _breakage() == 4 * USD + left
    assert ledger.balance(wallet.id).balance == 0
    assert ledger.expire_lots().amount == 0
    _audit_clean()


@BOTH
@pytest.mark.parametrize("job_first", [True, False], ids=["job-ran", "job-not-run"])
def test_charge_above_the_hold_after_expiry_uses_only_live_credit(make, clock, job_first):
    """The hold stays covered by the expired lot, but the excess comes from live credit, job or no job."""
    now = clock.now()
    wallet = make.account().wallet
    # Longest-lived first: under `rolling` a purchase extends the lots that expire before it.
    live = ledger.grant(wallet.id, 5 * USD, "purchase", expires_at=now + 60 * DAY).lot
    expiring = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY).lot
    ledger.reserve(wallet.id, "call-1", 6 * USD)
    clock.advance(days=2)
    if job_first:
        assert ledger.expire_lots().amount == 4 * USD

    settled = ledger.settle("call-1", 9 * USD)
    assert (settled.charged, settled.shortfall) == (9 * USD, 0)
    assert _remaining(wallet.id) == {expiring.id: 0, live.id: 2 * USD}
    assert _breakage() == 4 * USD
    assert ledger.balance(wallet.id).balance == 2 * USD
    assert ledger.expire_lots().amount == 0
    _audit_clean()


@BOTH
def test_reserve_after_expiry_before_the_job_cannot_use_expired_credit(make, clock, database):
    now = clock.now()
    wallet = make.account().wallet
    ledger.grant(wallet.id, 3 * USD, "purchase", expires_at=now + 60 * DAY)
    ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY)
    clock.advance(days=1)

    before = table_snapshot(database)
    with pytest.raises(InsufficientCredit) as info:
        ledger.reserve(wallet.id, "call-1", 3 * USD + 1)
    assert info.value.extra["available"] == 3 * USD
    assert table_snapshot(database) == before

    ledger.reserve(wallet.id, "call-1", 3 * USD)
    view = ledger.balance(wallet.id)
    assert (view.balance, view.held, view.available) == (3 * USD, 3 * USD, 0)
    assert _breakage() == 10 * USD  # the reservation broke the expired lot on the way
    assert ledger.expire_lots().amount == 0
    _audit_clean()


@BOTH
def test_hold_made_after_expiry_does_not_protect_the_expired_lot(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    ledger.grant(wallet.id, 5 * USD, "purchase", expires_at=now + 60 * DAY)
    expiring = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY).lot
    ledger.reserve(wallet.id, "early", 2 * USD)
    clock.advance(days=2)
    ledger.reserve(wallet.id, "late", 4 * USD)  # only the live lot can back it
    assert _remaining(wallet.id)[expiring.id] == 2 * USD  # kept for "early" only
    assert _breakage() == 8 * USD
    view = ledger.balance(wallet.id)
    assert (view.balance, view.held, view.available) == (7 * USD, 6 * USD, 1 * USD)
    assert ledger.settle("late", 4 * USD).shortfall == 0
    assert ledger.settle("early", 2 * USD).shortfall == 0
    assert ledger.balance(wallet.id).balance == 1 * USD
    _audit_clean()


@BOTH
def test_expired_hold_charged_late_uses_only_live_credit(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    ledger.grant(wallet.id, 2 * USD, "purchase", expires_at=now + 60 * DAY)
    ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY)
    ledger.reserve(wallet.id, "call-1", 5 * USD, ttl_s=3600)
    clock.advance(days=2)
    assert ledger.sweep_holds() == 1
    settled = ledger.settle("call-1", 5 * USD)
    assert (settled.status, settled.charged, settled.shortfall) == ("expired", 2 * USD, 3 * USD)
    assert ledger.system_balances()["credit_loss"] == -3 * USD
    assert ledger.balance(wallet.id).balance == 0
    _audit_clean()


# ---------------------------------------------------------------- policies compared


@pytest.mark.parametrize("settings_overrides", [PER_LOT], ids=["per_lot"])
def test_per_lot_purchase_does_not_extend_other_lots(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    first = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 10 * DAY).lot
    clock.advance(days=5)
    second = ledger.grant(wallet.id, 5 * USD, "purchase").lot
    assert second.expires_at == now + 5 * DAY + 180 * DAY
    assert ledger.lots(wallet.id)[0].expires_at == first.expires_at
    clock.advance(days=6)
    result = ledger.expire_lots()
    assert result.amount == 10 * USD
    assert ledger.balance(wallet.id).balance == 5 * USD
    _audit_clean()


@pytest.mark.parametrize("settings_overrides", [ROLLING], ids=["rolling"])
def test_rolling_purchase_extends_every_live_lot(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    paid = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 10 * DAY).lot
    promo = ledger.grant(wallet.id, 2 * USD, "promo", expires_at=now + 3 * DAY).lot
    far = ledger.grant(wallet.id, 1 * USD, "credit_note", expires_at=now + 400 * DAY).lot
    clock.advance(days=5)  # the promo lot has expired (the job has not run): it is not revived
    new = ledger.grant(wallet.id, 5 * USD, "purchase").lot
    horizon = now + 5 * DAY + 180 * DAY
    assert new.expires_at == horizon
    expiries = {v.id: v.expires_at for v in ledger.lots(wallet.id)}
    assert expiries == {paid.id: horizon, promo.id: now + 3 * DAY, new.id: horizon, far.id: now + 400 * DAY}
    assert ledger.balance(wallet.id).next_expiry_at <= now + 3 * DAY  # the expired promo is still due

    result = ledger.expire_lots()
    assert (result.lots, result.amount) == (1, 2 * USD)
    assert ledger.balance(wallet.id).next_expiry_at == horizon
    clock.advance(days=100)
    assert ledger.expire_lots().amount == 0  # the 10.00 lot would have expired under per_lot
    assert ledger.balance(wallet.id).balance == 16 * USD
    clock.set(horizon)
    assert ledger.expire_lots().amount == 15 * USD
    assert ledger.balance(wallet.id).balance == 1 * USD
    _audit_clean()


@pytest.mark.parametrize("settings_overrides", [ROLLING], ids=["rolling"])
def test_rolling_goodwill_credit_extends_nothing(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    paid = ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 10 * DAY).lot
    ledger.grant(wallet.id, 2 * USD, "promo", expires_at=now + 300 * DAY)
    ledger.grant(wallet.id, 2 * USD, "credit_note", expires_at=now + 300 * DAY)
    assert {v.id: v.expires_at for v in ledger.lots(wallet.id)}[paid.id] == now + 10 * DAY
    clock.advance(days=10)
    assert ledger.expire_lots().amount == 10 * USD
    _audit_clean()


@pytest.mark.parametrize("settings_overrides", [ROLLING], ids=["rolling"])
def test_rolling_with_a_hold_across_the_old_expiry(make, clock):
    now = clock.now()
    wallet = make.account().wallet
    ledger.grant(wallet.id, 10 * USD, "purchase", expires_at=now + 1 * DAY)
    ledger.reserve(wallet.id, "call-1", 4 * USD)
    clock.advance(days=2)
    # A purchase after the expiry does not revive the expired lot; the hold still keeps its share.
    ledger.grant(wallet.id, 5 * USD, "purchase")
    assert ledger.expire_lots().amount == 6 * USD
    assert ledger.settle("call-1", 4 * USD).shortfall == 0
    view = ledger.balance(wallet.id)
    assert (view.balance, view.held) == (5 * USD, 0)
    _audit_clean()
