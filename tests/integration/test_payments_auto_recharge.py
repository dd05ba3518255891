"""Auto-recharge with FakeGateway: settings, the job, decline and back-off, authentication required, timeout,
caps, frozen accounts, and racing triggers charging exactly once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from credits import jobs
from credits.db import unit_of_work
from credits.errors import AccountNotActive, NotFound, ValidationError
from credits.ledger import service as ledger
from credits.notify import outbox
from credits.payments import auto_recharge, cards, service
from credits.payments.fake_gateway import FakeGateway
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import Buyer, audit_clean, fake_card, outbox_templates

TEN = 10_000_000


@pytest.fixture
def saved(fake: FakeGateway, buyer: Buyer) -> str:
    """The buyer bought 10.00 and kept the card."""
    pm = fake_card(fake, buyer.user_id)
    service.purchase(buyer.user_id, "10.00", pm, remember=True)
    return pm


def _spend(buyer: Buyer, amount: int, key: str = "call:1") -> None:
    ledger.reserve(buyer.wallet_id, key, amount)
    ledger.settle(key, amount)


def _enable(buyer: Buyer, pm: str, **kw: Any) -> auto_recharge.AutoRechargeView:
    values = {"threshold": "5.00", "amount": "20.00", "monthly_cap": "100.00", **kw}
    return auto_recharge.configure(buyer.user_id, enabled=True, payment_method=pm, **values)


def _auto_purchases(database: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT status, failure_code, amount FROM purchases "
                                         "WHERE kind = 'auto_recharge' ORDER BY id")).all())


def _intents(fake: FakeGateway) -> int:
    return sum(1 for c in fake.calls if c.operation == "create_payment_intent")


def test_settings_are_validated(fake: FakeGateway, buyer: Buyer, saved: str, database: Any, clock: Any):
    view = _enable(buyer, saved)
    assert (view.enabled, view.threshold, view.amount, view.monthly_cap, view.payment_method) == (
        True, 5_000_000, 20_000_000, 100_000_000, saved)
    other = fake_card(fake, buyer.user_id)  # set up but not saved
    for kw in ({"payment_method": other}, {"payment_method": "pm_nope"}, {"monthly_cap": "10.00"},
               {"monthly_cap": "100000.00"}, {"amount": "1.00"}, {"threshold": "0"}, {"threshold": None}):
        values = {"threshold": "5.00", "amount": "20.00", "monthly_cap": "100.00", "payment_method": saved, **kw}
        with pytest.raises(ValidationError):
            auto_recharge.configure(buyer.user_id, enabled=True, **values)
    off = auto_recharge.configure(buyer.user_id, enabled=False)
    assert off.enabled is False and off.amount == 20_000_000
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET money_frozen_at = :t WHERE id = :id"),
                     {"t": clock.now().replace(tzinfo=None), "id": buyer.user_id})
    with pytest.raises(AccountNotActive):
        _enable(buyer, saved)
    assert auto_recharge.configure(buyer.user_id, enabled=False).enabled is False


def test_a_settle_below_the_threshold_is_recharged_by_the_job_not_in_the_switch_request(
        fake: FakeGateway, buyer: Buyer, saved: str, database: Any):
    _enable(buyer, saved)
    assert jobs.run_once("auto-recharge") == {}  # 10.00 available: nothing due
    calls = len(fake.calls)
    _spend(buyer, 6_000_000)  # the call's settle: 4.00 left, below 5.00
    assert len(fake.calls) == calls  # no gateway call on the switch's path
    assert jobs.run_once("auto-recharge") == {"succeeded": 1}
    assert ledger.get_wallet(buyer.wallet_id).balance == 24_000_000
    sources = sorted(lot.source for lot in ledger.lots(buyer.wallet_id))
    assert sources == ["auto_recharge", "purchase"]
    assert jobs.run_once("auto-recharge") == {}
    intent = [c for c in fake.calls if c.operation == "create_payment_intent"][-1]
    assert intent.params["off_session"] is True and intent.idempotency_key.startswith("auto-recharge:")
    assert outbox_templates(database).count("purchase_receipt") == 2
    audit_clean()


def test_declines_back_off_then_switch_it_off_with_an_email(fake: FakeGateway, buyer: Buyer, saved: str,
                                                           database: Any, clock: Any):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    fake.decline_next("insufficient_funds")
    assert jobs.run_once("auto-recharge") == {"failed": 1}
    state = auto_recharge.get_settings(buyer.user_id)
    assert state.consecutive_failures == 1 and state.next_attempt_at is not None
    assert jobs.run_once("auto-recharge") == {}  # backing off: not even looked at
    clock.advance(minutes=59)
    assert jobs.run_once("auto-recharge") == {}
    clock.advance(minutes=2)
    fake.decline_next()
    assert jobs.run_once("auto-recharge") == {"failed": 1}
    assert auto_recharge.get_settings(buyer.user_id).consecutive_failures == 2
    clock.advance(hours=3, minutes=59)  # second back-off is 4 hours
    assert jobs.run_once("auto-recharge") == {}
    clock.advance(minutes=2)
    fake.decline_next()
    assert jobs.run_once("auto-recharge") == {"failed": 1}
    state = auto_recharge.get_settings(buyer.user_id)
    assert (state.enabled, state.disabled_reason, state.consecutive_failures) == (False, "failures", 3)
    clock.advance(days=2)
    intents = _intents(fake)
    assert jobs.run_once("auto-recharge") == {}
    assert _intents(fake) == intents
    assert outbox_templates(database).count("auto_recharge_failed") == 3
    with unit_of_work() as uow:
        ids = uow.session.execute(sa.text("SELECT id FROM outbox WHERE template = 'auto_recharge_failed' "
                                          "ORDER BY id")).scalars().all()
        contexts = [outbox.read(uow.session, i)[2] for i in ids]
    assert [c["disabled"] for c in contexts] == [False, False, True]
    assert contexts[0]["amount"] == "20.00" and contexts[0]["reason"] == "your card was declined"
    assert "insufficient" not in repr(contexts)  # the decline code is for staff, not the customer
    assert ledger.get_wallet(buyer.wallet_id).balance == 4_000_000
    audit_clean()


def test_a_success_resets_the_failure_count(fake: FakeGateway, buyer: Buyer, saved: str, clock: Any):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    fake.decline_next()
    jobs.run_once("auto-recharge")
    clock.advance(hours=2)
    assert jobs.run_once("auto-recharge") == {"succeeded": 1}
    state = auto_recharge.get_settings(buyer.user_id)
    assert (state.consecutive_failures, state.next_attempt_at, state.enabled) == (0, None, True)


def test_authentication_required_emails_a_pay_link_and_paying_it_grants(fake: FakeGateway, buyer: Buyer,
                                                                        saved: str, database: Any):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    fake.require_authentication_next()
    assert jobs.run_once("auto-recharge") == {"requires_action": 1}
    [row] = _auto_purchases(database)
    assert (row.status, row.failure_code) == ("requires_action", "authentication_required")
    assert "auto_recharge_action_required" in outbox_templates(database)
    with database.engine.connect() as conn:
        tokens = conn.execute(sa.text("SELECT purpose, token_hash, used_at FROM email_tokens")).all()
    assert [(t.purpose, t.used_at) for t in tokens] == [("pay_link", None)] and len(tokens[0].token_hash) == 64
    assert auto_recharge.get_settings(buyer.user_id).consecutive_failures == 1
    # The customer follows the link and confirms with their bank (stripe.confirmCardPayment on the pay page).
    with database.engine.connect() as conn:
        purchase_id, intent_id = conn.execute(sa.text(
            "SELECT id, payment_intent_id FROM purchases WHERE kind = 'auto_recharge'")).one()
    with unit_of_work() as uow:
        _template, _to, context = outbox.read(uow.session, max(uow.session.execute(sa.text(
            "SELECT id FROM outbox WHERE template = 'auto_recharge_action_required'")).scalars()))
    token = context["link"].split("token=", 1)[1]
    assert (context["amount"], context["currency"]) == ("20.00", "USD")
    on_page = auto_recharge.pay_link_purchase(token)  # the pay page opens
    assert (on_page.id, on_page.status) == (purchase_id, "requires_action") and on_page.client_secret
    fake.authenticate_payment_intent(intent_id)  # stripe.confirmCardPayment(client_secret) on that page
    assert auto_recharge.pay_link_purchase(token).status == "succeeded"
    with pytest.raises(NotFound):
        auto_recharge.pay_link_purchase(token)  # spent
    with pytest.raises(NotFound):
        auto_recharge.pay_link_purchase("x" * 43)
    assert service.get_purchase(buyer.user_id, purchase_id).status == "succeeded"
    assert ledger.get_wallet(buyer.wallet_id).balance == 24_000_000
    assert auto_recharge.get_settings(buyer.user_id).consecutive_failures == 0
    audit_clean()


def test_timeout_keeps_one_attempt_in_flight_until_reconciled(fake: FakeGateway, buyer: Buyer, saved: str,
                                                              clock: Any, database: Any):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    fake.time_out_next("create_payment_intent", happened=True)
    assert jobs.run_once("auto-recharge") == {"processing": 1}
    assert jobs.run_once("auto-recharge") == {"in_flight": 1}
    assert fake.charge_count() == 2  # the first purchase and the timed-out recharge
    clock.advance(minutes=16)
    assert jobs.run_once("reconcile-payments")["purchases"] == {"succeeded": 1}
    assert jobs.run_once("auto-recharge") == {}
    assert ledger.get_wallet(buyer.wallet_id).balance == 24_000_000
    assert [r.status for r in _auto_purchases(database)] == ["succeeded"]
    audit_clean()


def test_unavailable_gateway_is_not_a_card_failure(fake: FakeGateway, buyer: Buyer, saved: str, clock: Any):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    fake.unavailable_next("create_payment_intent")
    assert jobs.run_once("auto-recharge") == {"failed": 1}
    assert auto_recharge.get_settings(buyer.user_id).consecutive_failures == 0
    clock.advance(minutes=6)
    assert jobs.run_once("auto-recharge") == {"succeeded": 1}


@pytest.mark.parametrize("threads", [2, 6])
def test_racing_triggers_charge_exactly_once(fake: FakeGateway, buyer: Buyer, saved: str, database: Any,
                                             monkeypatch: pytest.MonkeyPatch, threads: int):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    original = fake.create_payment_intent

    def slow(**kwargs: Any) -> Any:
        time.sleep(0.2)  # the gateway takes its time: the other triggers arrive while this one is in flight
        return original(**kwargs)

    monkeypatch.setattr(fake, "create_payment_intent", slow)
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def trigger() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(auto_recharge.recharge_wallet(buyer.wallet_id))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=trigger) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    assert sorted(outcomes).count("succeeded") == 1, outcomes
    assert set(outcomes) <= {"succeeded", "in_flight", "not_needed"}
    assert len(_auto_purchases(database)) == 1
    assert fake.charge_count() == 2  # the original purchase and one recharge
    assert ledger.get_wallet(buyer.wallet_id).balance == 24_000_000
    audit_clean()


def test_daily_and_monthly_caps(fake: FakeGateway, buyer: Buyer, saved: str, clock: Any):
    _enable(buyer, saved, amount="50.00", threshold="40.00", monthly_cap="120.00")
    _spend(buyer, 9_000_000)  # 1.00 left
    assert jobs.run_once("auto-recharge") == {"succeeded": 1}  # 51.00
    _spend(buyer, 50_000_000, "call:2")
    assert jobs.run_once("auto-recharge") == {"succeeded": 1}  # 100.00 today: the daily cap
    _spend(buyer, 50_000_000, "call:3")
    assert jobs.run_once("auto-recharge") == {"capped": 1}
    assert jobs.run_once("auto-recharge") == {}
    clock.advance(days=1, minutes=1)
    assert jobs.run_once("auto-recharge") == {"capped": 1}  # the monthly cap (120.00) now
    state = auto_recharge.get_settings(buyer.user_id)
    assert state.next_attempt_at is not None and state.next_attempt_at.day == 1
    assert fake.charge_count() == 3
    audit_clean()


def test_frozen_account_is_not_recharged(fake: FakeGateway, buyer: Buyer, saved: str, database: Any, clock: Any):
    _enable(buyer, saved)
    _spend(buyer, 6_000_000)
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET money_frozen_at = :t WHERE id = :id"),
                     {"t": clock.now().replace(tzinfo=None), "id": buyer.user_id})
    assert jobs.run_once("auto-recharge") == {"frozen": 1}
    assert fake.charge_count() == 1


def test_removing_the_card_switches_auto_recharge_off(fake: FakeGateway, buyer: Buyer, saved: str):
    _enable(buyer, saved)
    cards.remove_card(buyer.user_id, saved)
    state = auto_recharge.get_settings(buyer.user_id)
    assert (state.enabled, state.disabled_reason) == (False, "card_removed")
    _spend(buyer, 6_000_000)
    assert jobs.run_once("auto-recharge") == {}
    assert cards.list_cards(buyer.user_id) == []
