"""Purchases with FakeGateway: success, decline, 3-D Secure, saved cards, amounts, timeouts, crash safety."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits import jobs
from credits.db import unit_of_work
from credits.errors import AccountNotActive, IdempotencyConflict, NotFound, ValidationError
from credits.ledger import service as ledger
from credits.notify import outbox
from credits.payments import cards, reconcile, service
from credits.payments.errors import CardDeclined, GatewayUnavailable
from credits.payments.fake_gateway import FakeGateway
from tests.conftest import row_counts
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import (
    DECLINED,
    THREE_D_SECURE,
    Buyer,
    audit_clean,
    fake_card,
    new_buyer,
    outbox_templates,
)

TEN = 10_000_000


def _purchases(database: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT * FROM purchases ORDER BY id")).mappings())


def _card_status(database: Any, pm: str) -> str | None:
    with database.engine.connect() as conn:
        return conn.execute(sa.text("SELECT status FROM payment_methods WHERE gateway_payment_method_id = :pm "
                                    "OR (gateway_payment_method_id IS NULL AND status = 'forgotten')"),
                            {"pm": pm}).scalar()


def test_purchase_succeeds_grants_the_credit_once_with_a_receipt(fake: FakeGateway, buyer: Buyer, database: Any):
    pm = fake_card(fake, buyer.user_id)
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert (view.status, view.amount, view.currency, view.client_secret) == ("succeeded", TEN, "USD", None)
    assert view.lot_id and view.lot_expires_at and view.payment_intent_id
    wallet = ledger.get_wallet(buyer.wallet_id)
    assert wallet.balance == TEN
    [lot] = ledger.lots(buyer.wallet_id)
    assert (lot.id, lot.source, lot.granted, lot.reference) == (view.lot_id, "purchase", TEN, f"purchase:{view.id}")
    intent = fake.retrieve_payment_intent(view.payment_intent_id)
    assert intent.customer and fake.succeeded_amount(intent.customer) == 1000
    with unit_of_work() as uow:
        key = uow.session.execute(sa.text("SELECT idempotency_key FROM purchases WHERE id = :id"),
                                  {"id": view.id}).scalar_one()
    assert dict(intent.metadata) == {"purchase_id": str(view.id), "purchase_ref": service.purchase_ref(key),
                                     "wallet_id": str(buyer.wallet_id), "user_id": str(buyer.user_id),
                                     "kind": "purchase"}
    assert outbox_templates(database) == ["purchase_receipt"]
    with unit_of_work() as uow:
        template, to, context = outbox.read(uow.session, 1)
    assert (template, to) == ("purchase_receipt", buyer.email)
    assert {k: context[k] for k in ("amount", "currency", "purchase_id", "card_last4", "balance")} == {
        "amount": "10.00", "currency": "USD", "purchase_id": view.id, "card_last4": "4242", "balance": "10.00"}
    assert context["at"] and context["expires_at"]
    # Not remembered: detached at the gateway, forgotten here; settling again grants nothing more.
    assert fake.list_payment_methods(intent.customer) == []
    assert cards.list_cards(buyer.user_id) == []
    assert service.settle(view.id).lot_id == view.lot_id
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    # Our idempotency key on every mutating call.
    mutating = ("create_payment_intent", "attach_payment_method", "create_setup_intent", "create_customer")
    assert all(c.idempotency_key for c in fake.calls if c.operation in mutating)
    audit_clean()


def test_remembered_card_is_saved_and_reused_without_a_new_setup(fake: FakeGateway, buyer: Buyer):
    pm = fake_card(fake, buyer.user_id)
    service.purchase(buyer.user_id, "5.00", pm, remember=True)
    [saved] = cards.list_cards(buyer.user_id)
    assert (saved.id, saved.brand, saved.last4, saved.exp_month, saved.exp_year) == (pm, "visa", "4242", 12, 2030)
    attaches = sum(1 for c in fake.calls if c.operation == "attach_payment_method")
    again = service.purchase(buyer.user_id, "20.00", pm)
    assert again.status == "succeeded"
    assert sum(1 for c in fake.calls if c.operation == "attach_payment_method") == attaches
    assert len(cards.list_cards(buyer.user_id)) == 1  # remember=False does not forget a saved card
    assert ledger.get_wallet(buyer.wallet_id).balance == 25_000_000
    audit_clean()


def test_saved_card_refused_while_money_is_frozen_but_a_new_card_works(fake: FakeGateway, buyer: Buyer,
                                                                      database: Any, clock: Any):
    pm = fake_card(fake, buyer.user_id)
    service.purchase(buyer.user_id, "5.00", pm, remember=True)
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET money_frozen_at = :t WHERE id = :id"),
                     {"t": clock.now().replace(tzinfo=None), "id": buyer.user_id})
    before = row_counts(database)
    with pytest.raises(AccountNotActive):
        service.purchase(buyer.user_id, "5.00", pm)
    assert row_counts(database) == before
    fresh = fake_card(fake, buyer.user_id)
    assert service.purchase(buyer.user_id, "5.00", fresh).status == "succeeded"
    audit_clean()


def test_declined_card_grants_nothing(fake: FakeGateway, buyer: Buyer, database: Any):
    pm = fake_card(fake, buyer.user_id, DECLINED)
    with pytest.raises(CardDeclined) as caught:
        service.purchase(buyer.user_id, "10.00", pm, remember=True)
    assert caught.value.status == 402 and "declined" in caught.value.message
    [row] = _purchases(database)
    assert (row["status"], row["failure_code"], row["lot_id"]) == ("failed", "card_declined", None)
    assert row["payment_intent_id"]  # the failed intent is known (for support)
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    assert cards.list_cards(buyer.user_id) == []  # a declined card is not kept, even with remember
    assert fake.charge_count() == 0
    audit_clean()


def test_three_d_secure_requires_action_then_get_settles_once(fake: FakeGateway, buyer: Buyer):
    pm = fake_card(fake, buyer.user_id, THREE_D_SECURE)
    view = service.purchase(buyer.user_id, "20.00", pm)
    assert view.status == "requires_action" and view.client_secret and view.lot_id is None
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    # Still waiting: GET says so and returns the client secret again.
    waiting = service.get_purchase(buyer.user_id, view.id)
    assert waiting.status == "requires_action" and waiting.client_secret == view.client_secret
    fake.authenticate_payment_intent(view.payment_intent_id)  # stripe.confirmCardPayment in the browser
    done = service.get_purchase(buyer.user_id, view.id)
    assert done.status == "succeeded" and done.client_secret is None
    assert service.get_purchase(buyer.user_id, view.id).lot_id == done.lot_id
    assert ledger.get_wallet(buyer.wallet_id).balance == 20_000_000
    with pytest.raises(NotFound):
        service.get_purchase(buyer.user_id + 999, view.id)
    audit_clean()


def test_three_d_secure_failed_marks_the_purchase_failed(fake: FakeGateway, buyer: Buyer):
    pm = fake_card(fake, buyer.user_id, THREE_D_SECURE)
    view = service.purchase(buyer.user_id, "20.00", pm)
    fake.authenticate_payment_intent(view.payment_intent_id, success=False)
    failed = service.get_purchase(buyer.user_id, view.id)
    assert (failed.status, failed.failure_code) == ("failed", "payment_intent_authentication_failure")
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    audit_clean()


@pytest.mark.parametrize("amount", ["5.00", "50.00", "7.35", "500", "500.00"])
def test_packages_and_custom_amounts_are_accepted(fake: FakeGateway, buyer: Buyer, amount: str):
    pm = fake_card(fake, buyer.user_id)
    view = service.purchase(buyer.user_id, amount, pm)
    assert view.amount == ledger.get_wallet(buyer.wallet_id).balance


@pytest.mark.parametrize("amount", ["4.99", "500.01", "10.001", "-10.00", "ten", "", "1e3", 10])
def test_bad_amounts_are_refused_and_change_nothing(fake: FakeGateway, buyer: Buyer, database: Any, amount: Any):
    pm = fake_card(fake, buyer.user_id)
    before = row_counts(database)
    calls = len(fake.calls)
    with pytest.raises(ValidationError):
        service.purchase(buyer.user_id, amount, pm)
    assert row_counts(database) == before and len(fake.calls) == calls


def test_someone_elses_or_unknown_card_is_refused(fake: FakeGateway, buyer: Buyer, make: Any, database: Any):
    other = new_buyer(make)
    theirs = fake_card(fake, other.user_id)
    stray = fake.create_card_payment_method("4242424242424242", 12, 2030)  # never set up for anyone
    before = row_counts(database)
    for pm in (theirs, stray, "pm_doesnotexist", "not-a-pm"):
        with pytest.raises(ValidationError):
            service.purchase(buyer.user_id, "10.00", pm)
    assert row_counts(database) == before
    assert fake.charge_count() == 0


def test_client_idempotency_key_returns_the_first_purchase(fake: FakeGateway, buyer: Buyer):
    pm = fake_card(fake, buyer.user_id)
    first = service.purchase(buyer.user_id, "10.00", pm, remember=True, client_key="order-1")
    again = service.purchase(buyer.user_id, "10.00", pm, client_key="order-1")
    assert again.id == first.id and fake.charge_count() == 1
    with pytest.raises(IdempotencyConflict):
        service.purchase(buyer.user_id, "20.00", pm, client_key="order-1")
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN


def test_gateway_unavailable_fails_cleanly(fake: FakeGateway, buyer: Buyer, database: Any):
    pm = fake_card(fake, buyer.user_id)
    fake.unavailable_next("create_payment_intent")
    with pytest.raises(GatewayUnavailable):
        service.purchase(buyer.user_id, "10.00", pm)
    [row] = _purchases(database)
    assert (row["status"], row["failure_code"]) == ("failed", "gateway_unavailable")
    assert ledger.get_wallet(buyer.wallet_id).balance == 0


def test_timeout_after_the_charge_is_settled_by_reconciliation_once(fake: FakeGateway, buyer: Buyer, clock: Any,
                                                                    database: Any):
    pm = fake_card(fake, buyer.user_id)
    fake.time_out_next("create_payment_intent", happened=True)
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert view.status == "processing" and view.payment_intent_id is None
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    assert fake.charge_count() == 1  # it did happen at the gateway
    assert jobs.run_once("reconcile-payments")["purchases"] == {}  # too young to reconcile
    clock.advance(minutes=16)
    assert jobs.run_once("reconcile-payments")["purchases"] == {"succeeded": 1}
    clock.advance(minutes=16)
    jobs.run_once("reconcile-payments")
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    assert service.view(view.id).status == "succeeded"
    assert outbox_templates(database).count("purchase_receipt") == 1
    audit_clean()


def test_crash_after_the_gateway_succeeded_is_granted_once_by_the_job(fake: FakeGateway, buyer: Buyer, clock: Any,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """The transaction that records the success fails (the process dies, the database is gone): the customer
    was charged, nothing was granted. The reconciliation job finds the intent by its metadata and grants once."""
    pm = fake_card(fake, buyer.user_id)

    def crash(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("database connection lost")

    monkeypatch.setattr(service, "_grant", crash)
    with pytest.raises(RuntimeError):
        service.purchase(buyer.user_id, "10.00", pm)
    monkeypatch.undo()
    assert fake.charge_count() == 1 and ledger.get_wallet(buyer.wallet_id).balance == 0
    [row] = service_rows(buyer)
    assert row.status == "pending" and row.payment_intent_id is None
    assert not run_audit_ok_about_grants()  # nothing wrong yet in the ledger: no succeeded purchase
    clock.advance(minutes=20)
    first = jobs.run_once("reconcile-payments")
    second = jobs.run_once("reconcile-payments")
    assert first["purchases"] == {"succeeded": 1} and second["purchases"] == {}
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    assert len(ledger.lots(buyer.wallet_id)) == 1
    assert reconcile.report(clock.now() - timedelta(days=1)).ok
    audit_clean()


def test_pending_purchase_without_an_intent_is_failed_by_the_job(fake: FakeGateway, buyer: Buyer, clock: Any):
    pm = fake_card(fake, buyer.user_id)
    fake.time_out_next("create_payment_intent", happened=False)
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert view.status == "processing"
    clock.advance(minutes=20)
    assert jobs.run_once("reconcile-payments")["purchases"] == {"failed": 1}
    assert service.view(view.id).failure_code == "no_intent"
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    audit_clean()


def test_abandoned_three_d_secure_expires_but_a_late_success_still_grants(fake: FakeGateway, buyer: Buyer,
                                                                         clock: Any):
    pm = fake_card(fake, buyer.user_id, THREE_D_SECURE)
    view = service.purchase(buyer.user_id, "10.00", pm)
    clock.advance(hours=49)
    assert jobs.run_once("reconcile-payments")["purchases"] == {"failed": 1}
    assert service.view(view.id).failure_code == "authentication_abandoned"
    fake.authenticate_payment_intent(view.payment_intent_id)
    # The webhook of the late success grants, although the purchase was marked failed.
    from credits.payments import webhooks

    hook = fake.event_for_payment_intent(view.payment_intent_id)
    assert webhooks.handle(hook.payload, hook.signature_header).outcome == "granted"
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    audit_clean()


def service_rows(buyer: Buyer) -> list[Any]:
    from credits.db import unit_of_work
    from credits.payments.models import Purchase

    with unit_of_work() as uow:
        return list(uow.session.execute(sa.select(Purchase.__table__).where(
            Purchase.__table__.c.user_id == buyer.user_id)).all())


def run_audit_ok_about_grants() -> list[str]:
    from credits.db import unit_of_work

    with unit_of_work() as uow:
        return reconcile.check_grants(uow.session)


def test_ledger_audit_checks_every_succeeded_payment_is_granted_exactly_once(fake: FakeGateway, buyer: Buyer,
                                                                            database: Any):
    from credits.ledger.audit import run_audit

    view = service.purchase(buyer.user_id, "10.00", fake_card(fake, buyer.user_id))
    audit_clean()
    # A second grant for the same purchase under another key (what the intent-keyed grant prevents).
    ledger.grant(buyer.wallet_id, TEN, "purchase", key="a-bug", reference=f"purchase:{view.id}")
    report = run_audit()
    assert not report.ok
    assert f"purchase:{view.id} was granted 2 lots" in report.text()
    assert "claims purchase:" in report.text()
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE purchases SET amount = amount + 1 WHERE id = :id"), {"id": view.id})
    assert f"purchase {view.id} (succeeded) and its grant disagree" in run_audit().text()
