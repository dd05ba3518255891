"""POST /webhooks/stripe: forged, stale, replayed, duplicated and reordered events; unknown intents; refunds,
disputes and setup intents from the gateway."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from credits import clock as clock_mod
from credits.ledger import service as ledger
from credits.payments import auto_recharge, cards, service
from credits.payments.fake_gateway import FakeGateway, SignedWebhook
from tests.conftest import table_snapshot
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import WEBHOOK_SECRET, Buyer, audit_clean, fake_card, outbox_templates

TEN = 10_000_000


def post(client: Any, hook: SignedWebhook, **headers: str) -> Any:
    return client.post("/webhooks/stripe", data=hook.payload, headers={**hook.headers, **headers})


def _events(database: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT event_id, type, outcome, processed_at FROM webhook_events "
                                         "ORDER BY id")).mappings())


def _paid(fake: FakeGateway, buyer: Buyer, amount: str = "10.00", **kw: Any) -> service.PurchaseView:
    return service.purchase(buyer.user_id, amount, fake_card(fake, buyer.user_id), **kw)


def _succeeded_event(fake: FakeGateway, intent_id: str) -> SignedWebhook:
    return fake.event_for_payment_intent(intent_id, "payment_intent.succeeded")


# ---------------------------------------------------------------- signatures: 400 and nothing changes (I58)


@pytest.mark.parametrize("case", ["wrong secret", "altered body", "missing header", "garbage header", "stale"])
def test_I58_bad_signature_is_400_and_changes_nothing(fake: FakeGateway, buyer: Buyer, client: Any, database: Any,
                                                      case: str):
    pm = fake_card(fake, buyer.user_id, "4000002500003155")
    view = service.purchase(buyer.user_id, "10.00", pm)
    fake.authenticate_payment_intent(view.payment_intent_id)
    good = _succeeded_event(fake, view.payment_intent_id)
    before = table_snapshot(database)
    payload, header = good.payload, good.signature_header
    if case == "wrong secret":
        header = fake.signed(good.event, secret="whsec_attacker").signature_header
    elif case == "altered body":
        event = json.loads(payload)
        event["data"]["object"]["amount"] = 999999
        payload = json.dumps(event).encode()
    elif case == "garbage header":
        header = "t=abc,v1=zz"
    elif case == "stale":
        stale = fake.signed(good.event, timestamp=int(clock_mod.now().timestamp()) - 301)
        payload, header = stale.payload, stale.signature_header
    headers = {"Content-Type": "application/json"}
    if case != "missing header":
        headers["Stripe-Signature"] = header
    resp = client.post("/webhooks/stripe", data=payload, headers=headers)
    assert resp.status_code == 400
    assert resp.mimetype == "application/problem+json"
    assert table_snapshot(database) == before
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    # The genuine delivery still works afterwards.
    assert post(client, good).status_code == 200
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN


def test_I58_duplicate_delivery_credits_once(fake: FakeGateway, buyer: Buyer, client: Any, database: Any):
    pm = fake_card(fake, buyer.user_id, "4000002500003155")
    view = service.purchase(buyer.user_id, "10.00", pm)
    fake.authenticate_payment_intent(view.payment_intent_id)
    hook = _succeeded_event(fake, view.payment_intent_id)
    first, second = post(client, hook), post(client, hook)
    assert (first.status_code, first.get_json()["duplicate"]) == (200, False)
    assert (second.status_code, second.get_json()["duplicate"]) == (200, True)
    # A later replay of the same event, freshly signed, is the same event id: nothing more.
    clock_mod_now = clock_mod.now()
    assert post(client, fake.signed(hook.event, timestamp=int(clock_mod_now.timestamp()))).get_json()["duplicate"]
    # Another event about the same intent (Stripe may send it twice under two ids) grants nothing more either.
    assert post(client, _succeeded_event(fake, view.payment_intent_id)).status_code == 200
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    assert [e["outcome"] for e in _events(database)] == ["granted", "already_granted"]
    assert service.get_purchase(buyer.user_id, view.id).status == "succeeded"
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    assert outbox_templates(database).count("purchase_receipt") == 1
    audit_clean()


def test_I59_credit_comes_only_from_a_verified_success(fake: FakeGateway, buyer: Buyer, client: Any):
    """The browser returning from 3-D Secure proves nothing: GET settles only from the gateway's own state."""
    pm = fake_card(fake, buyer.user_id, "4000002500003155")
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert service.get_purchase(buyer.user_id, view.id).status == "requires_action"
    forged = fake.signed({**_succeeded_event(fake, view.payment_intent_id).event, "id": "evt_forged"},
                         secret="whsec_wrong")
    assert post(client, forged).status_code == 400
    assert ledger.get_wallet(buyer.wallet_id).balance == 0


def test_webhook_before_the_request_records_its_answer(fake: FakeGateway, buyer: Buyer, client: Any,
                                                       database: Any, monkeypatch: pytest.MonkeyPatch):
    """Reordered: payment_intent.succeeded arrives while the purchase request is still waiting for the gateway's
    answer (the purchase row has no intent id yet). The webhook grants; the request then finds it done."""
    pm = fake_card(fake, buyer.user_id)
    original = fake.create_payment_intent
    delivered: list[int] = []

    def gateway_then_webhook(**kwargs: Any) -> Any:
        result = original(**kwargs)
        with database.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT payment_intent_id FROM purchases")).scalar() is None
        delivered.append(post(client, _succeeded_event(fake, result.id)).status_code)
        return result

    monkeypatch.setattr(fake, "create_payment_intent", gateway_then_webhook)
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert delivered == [200] and view.status == "succeeded"
    assert [e["outcome"] for e in _events(database)] == ["granted"]
    assert len(ledger.lots(buyer.wallet_id)) == 1 and ledger.get_wallet(buyer.wallet_id).balance == TEN
    audit_clean()


def test_failed_after_succeeded_is_ignored(fake: FakeGateway, buyer: Buyer, client: Any):
    view = _paid(fake, buyer)
    late_failure = fake.event_for_payment_intent(view.payment_intent_id, "payment_intent.payment_failed")
    body = dict(late_failure.event)
    body["data"] = {"object": {**body["data"]["object"], "status": "requires_payment_method"}}
    assert post(client, fake.signed(body)).status_code == 200
    assert service.view(view.id).status == "succeeded"
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    audit_clean()


def test_payment_failed_event_fails_a_waiting_purchase(fake: FakeGateway, buyer: Buyer, client: Any):
    pm = fake_card(fake, buyer.user_id, "4000002500003155")
    view = service.purchase(buyer.user_id, "10.00", pm)
    fake.authenticate_payment_intent(view.payment_intent_id, success=False)
    hook = fake.event_for_payment_intent(view.payment_intent_id, "payment_intent.payment_failed")
    assert post(client, hook).status_code == 200
    assert service.view(view.id).status == "failed"


def test_unknown_intent_and_mismatch_grant_nothing(fake: FakeGateway, buyer: Buyer, client: Any, database: Any):
    view = _paid(fake, buyer)
    template = _succeeded_event(fake, view.payment_intent_id).event
    obj = template["data"]["object"]
    unknown = {**template, "id": "evt_unknown", "data": {"object": {**obj, "id": "pi_elsewhere", "metadata": {}}}}
    other_purchase = {**template, "id": "evt_other", "data": {"object": {
        **obj, "id": "pi_other", "metadata": {"purchase_id": "999999"}}}}
    wrong_amount = {**template, "id": "evt_amount", "data": {"object": {
        **obj, "id": "pi_amount", "amount": 99999, "metadata": {"purchase_id": str(view.id)}}}}
    for body in (unknown, other_purchase, wrong_amount):
        assert post(client, fake.signed(body)).status_code == 200
    outcomes = {e["event_id"]: e["outcome"] for e in _events(database)}
    assert outcomes == {"evt_unknown": "unknown_intent", "evt_other": "unknown_intent", "evt_amount": "mismatch"}
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    audit_clean()


def test_another_deployments_intent_for_the_same_purchase_id_grants_nothing(
        fake: FakeGateway, buyer: Buyer, client: Any, database: Any, monkeypatch: pytest.MonkeyPatch):
    """Purchase ids repeat across databases on one gateway account (staging, a test run): a succeeded intent
    whose metadata says purchase_id N, same amount and currency, arriving while our purchase N has no intent
    recorded yet, is not ours unless it carries purchase N's ref. Ours, delivered the same way, grants."""
    pm = fake_card(fake, buyer.user_id)
    original = fake.create_payment_intent
    outcomes: list[str] = []

    def foreign_then_ours(**kwargs: Any) -> Any:
        result = original(**kwargs)
        template = _succeeded_event(fake, result.id).event
        obj = template["data"]["object"]
        for event_id, ref in (("evt_foreign", None), ("evt_forged_ref", "0" * 32)):
            meta = {k: v for k, v in obj["metadata"].items() if k != "purchase_ref"}
            if ref:
                meta["purchase_ref"] = ref
            foreign = {**template, "id": event_id, "data": {"object": {**obj, "id": f"pi_{event_id}",
                                                                        "metadata": meta}}}
            assert post(client, fake.signed(foreign)).status_code == 200
            assert ledger.get_wallet(buyer.wallet_id).balance == 0
        assert post(client, _succeeded_event(fake, result.id)).status_code == 200
        outcomes.extend(e["outcome"] for e in _events(database))
        return result

    monkeypatch.setattr(fake, "create_payment_intent", foreign_then_ours)
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert outcomes == ["mismatch", "mismatch", "granted"]
    assert view.status == "succeeded" and view.payment_intent_id not in ("pi_evt_foreign", "pi_evt_forged_ref")
    assert len(ledger.lots(buyer.wallet_id)) == 1 and ledger.get_wallet(buyer.wallet_id).balance == TEN
    audit_clean()


def test_other_event_types_are_stored_and_ignored(fake: FakeGateway, client: Any, database: Any):
    body = {"id": "evt_customer", "object": "event", "type": "customer.created", "created": 1,
            "data": {"object": {"id": "cus_x", "object": "customer"}}}
    assert post(client, fake.signed(body)).status_code == 200
    assert [(e["type"], e["outcome"]) for e in _events(database)] == [("customer.created", "ignored")]
    bad = fake.signed({"id": "evt_bad", "type": "x"})  # signed, but not an event
    assert post(client, bad).status_code == 400


def test_setup_intent_succeeded_names_the_card_without_a_gateway_lookup(fake: FakeGateway, buyer: Buyer,
                                                                        client: Any):
    setup = cards.start_setup(buyer.user_id)
    pm = fake.create_card_payment_method("4242424242424242", 12, 2030)
    fake.confirm_setup_intent(setup.setup_intent_id, pm)
    [event] = [e for e in fake.events if e["type"] == "setup_intent.succeeded"]
    assert post(client, fake.signed(event)).status_code == 200
    lookups = sum(1 for c in fake.calls if c.operation == "retrieve_setup_intent")
    assert service.purchase(buyer.user_id, "10.00", pm).status == "succeeded"
    assert sum(1 for c in fake.calls if c.operation == "retrieve_setup_intent") == lookups


# ---------------------------------------------------------------- refunds and disputes from the gateway


def test_refund_made_at_the_gateway_takes_the_credit_back(fake: FakeGateway, buyer: Buyer, client: Any,
                                                          database: Any):
    view = _paid(fake, buyer)
    fake.refund(view.payment_intent_id, amount_minor=400, idempotency_key="dashboard:1")  # in Stripe's dashboard
    [event] = [e for e in fake.events if e["type"] == "charge.refunded"]
    assert post(client, fake.signed(event)).status_code == 200
    assert post(client, fake.signed(event)).get_json()["duplicate"]
    assert ledger.get_wallet(buyer.wallet_id).balance == 6_000_000
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT amount, status, requested_by FROM refunds")).all()
    assert rows == [(4_000_000, "succeeded", None)]
    assert ledger.system_balances()["refunds"] == 4_000_000
    audit_clean()


def _hold_total(wallet_id: int) -> int:
    return ledger.get_wallet(wallet_id).held


def test_dispute_holds_credit_stops_auto_recharge_and_a_loss_is_written_off(fake: FakeGateway, buyer: Buyer,
                                                                            client: Any):
    view = _paid(fake, buyer, remember=True)
    [saved] = cards.list_cards(buyer.user_id)
    auto_recharge.configure(buyer.user_id, enabled=True, threshold="2.00", amount="10.00", payment_method=saved.id,
                            monthly_cap="100.00")
    ledger.reserve(buyer.wallet_id, "call:spent", 3_000_000)
    ledger.settle("call:spent", 3_000_000)  # 3.00 of the 10.00 used on calls
    opened = fake.open_dispute(view.payment_intent_id)
    assert post(client, opened).status_code == 200
    assert post(client, opened).get_json()["duplicate"]
    wallet = ledger.get_wallet(buyer.wallet_id)
    assert (wallet.balance, wallet.held, wallet.available) == (7_000_000, 7_000_000, 0)
    settings = auto_recharge.get_settings(buyer.user_id)
    assert (settings.enabled, settings.disabled_reason) == (False, "dispute")
    closed = fake.close_dispute(opened.event["data"]["object"]["id"], won=False)
    assert post(client, closed).status_code == 200
    wallet = ledger.get_wallet(buyer.wallet_id)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert ledger.system_balances()["chargeback_loss"] == 7_000_000
    audit_clean()


def test_dispute_won_releases_the_credit(fake: FakeGateway, buyer: Buyer, client: Any):
    view = _paid(fake, buyer)
    opened = fake.open_dispute(view.payment_intent_id)
    post(client, opened)
    assert ledger.get_wallet(buyer.wallet_id).available == 0
    post(client, fake.close_dispute(opened.event["data"]["object"]["id"], won=True))
    wallet = ledger.get_wallet(buyer.wallet_id)
    assert (wallet.balance, wallet.held, wallet.available) == (TEN, 0, TEN)
    assert "chargeback_loss" not in ledger.system_balances()
    audit_clean()


def test_dispute_closed_before_it_was_seen_open(fake: FakeGateway, buyer: Buyer, client: Any):
    view = _paid(fake, buyer)
    opened = fake.open_dispute(view.payment_intent_id)
    closed = fake.close_dispute(opened.event["data"]["object"]["id"], won=False)
    assert post(client, closed).status_code == 200  # lost, and we never saw it open
    assert post(client, opened).status_code == 200  # the late "created" changes nothing
    wallet = ledger.get_wallet(buyer.wallet_id)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert ledger.system_balances()["chargeback_loss"] == TEN
    audit_clean()


def test_disputed_purchase_cannot_be_refunded(fake: FakeGateway, buyer: Buyer, client: Any, make: Any):
    from credits.errors import Conflict
    from credits.payments import refunds

    view = _paid(fake, buyer)
    post(client, fake.open_dispute(view.payment_intent_id))
    agent = make.account(role="support")
    with pytest.raises(Conflict):
        refunds.request_refund(view.id, "1.00", "customer asked", actor_id=agent.user_id)


def test_webhook_secret_is_required(app: Any, client: Any):
    """Without a secret nothing verifies (an empty key would let anyone sign)."""
    from credits.payments import provider

    previous = provider.install(FakeGateway(webhook_secret=""))
    try:
        hook = FakeGateway(webhook_secret="").signed({"id": "evt_1", "type": "x", "data": {"object": {}}})
        assert post(client, hook).status_code == 400
    finally:
        provider.install(previous)
    assert WEBHOOK_SECRET
