"""The real flow with StripeGateway on localstripe: SetupIntent, server-side confirmed purchase, 3-D Secure,
decline, off-session auto-recharge, localstripe's own signed webhooks, and the reconciliation report."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
import stripe
from werkzeug.serving import make_server

from credits import jobs
from credits.ledger import service as ledger
from credits.payments import auto_recharge, cards, service
from credits.payments.errors import CardDeclined
from credits.payments.localstripe_server import TEST_SECRET_KEY, LocalStripe
from credits.payments.stripe_gateway import StripeGateway
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import (
    DECLINED,
    THREE_D_SECURE,
    WEBHOOK_SECRET,
    Buyer,
    audit_clean,
    ls_card,
    outbox_templates,
)

TEN = 10_000_000


def test_buy_with_visa_through_localstripe(ls_gateway: StripeGateway, localstripe: LocalStripe, buyer: Buyer,
                                           database: Any):
    pm = ls_card(localstripe, buyer.user_id)
    view = service.purchase(buyer.user_id, "10.00", pm)
    assert view.status == "succeeded" and view.payment_intent_id and view.payment_intent_id.startswith("pi_")
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    intent = ls_gateway.retrieve_payment_intent(view.payment_intent_id)
    assert (intent.status, intent.amount_minor, intent.currency) == ("succeeded", 1000, "USD")
    assert dict(intent.metadata)["purchase_id"] == str(view.id)
    assert intent.customer and ls_gateway.list_payment_methods(intent.customer) == []  # not remembered: detached
    assert outbox_templates(database) == ["purchase_receipt"]
    audit_clean()


def test_three_d_secure_card_through_localstripe(ls_gateway: StripeGateway, localstripe: LocalStripe,
                                                 buyer: Buyer):
    pm = ls_card(localstripe, buyer.user_id, THREE_D_SECURE)
    view = service.purchase(buyer.user_id, "10.00", pm, remember=True)
    assert view.status == "requires_action" and view.client_secret
    assert service.get_purchase(buyer.user_id, view.id).status == "requires_action"
    assert view.payment_intent_id
    localstripe.authenticate_payment_intent(view.payment_intent_id, view.client_secret)  # the 3-D Secure dialog
    done = service.get_purchase(buyer.user_id, view.id)
    assert done.status == "succeeded"
    assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    assert [c.last4 for c in cards.list_cards(buyer.user_id)] == ["3155"]
    audit_clean()


def test_declined_card_through_localstripe(ls_gateway: StripeGateway, localstripe: LocalStripe, buyer: Buyer):
    pm = ls_card(localstripe, buyer.user_id, DECLINED)
    with pytest.raises(CardDeclined):
        service.purchase(buyer.user_id, "10.00", pm)
    assert ledger.get_wallet(buyer.wallet_id).balance == 0
    audit_clean()


def test_card_declined_at_setup_never_reaches_a_purchase(ls_gateway: StripeGateway, localstripe: LocalStripe,
                                                         buyer: Buyer):
    with pytest.raises(stripe.CardError):
        ls_card(localstripe, buyer.user_id, "4000000000000002")


def test_off_session_auto_recharge_through_localstripe(ls_gateway: StripeGateway, localstripe: LocalStripe,
                                                       buyer: Buyer, database: Any):
    pm = ls_card(localstripe, buyer.user_id)
    service.purchase(buyer.user_id, "10.00", pm, remember=True)
    auto_recharge.configure(buyer.user_id, enabled=True, threshold="5.00", amount="20.00", payment_method=pm,
                            monthly_cap="100.00")
    ledger.reserve(buyer.wallet_id, "call:1", 6_000_000)
    ledger.settle("call:1", 6_000_000)
    assert jobs.run_once("auto-recharge") == {"succeeded": 1}
    assert ledger.get_wallet(buyer.wallet_id).balance == 24_000_000
    audit_clean()


def test_off_session_three_d_secure_asks_the_customer(ls_gateway: StripeGateway, localstripe: LocalStripe,
                                                      buyer: Buyer, database: Any):
    pm = ls_card(localstripe, buyer.user_id, THREE_D_SECURE)
    first = service.purchase(buyer.user_id, "10.00", pm, remember=True)
    assert first.client_secret and first.payment_intent_id
    localstripe.authenticate_payment_intent(first.payment_intent_id, first.client_secret)
    service.get_purchase(buyer.user_id, first.id)
    auto_recharge.configure(buyer.user_id, enabled=True, threshold="5.00", amount="20.00", payment_method=pm,
                            monthly_cap="100.00")
    ledger.reserve(buyer.wallet_id, "call:1", 6_000_000)
    ledger.settle("call:1", 6_000_000)
    assert jobs.run_once("auto-recharge") == {"requires_action": 1}
    assert "auto_recharge_action_required" in outbox_templates(database)
    assert ledger.get_wallet(buyer.wallet_id).balance == 4_000_000


def test_reconcile_report_lists_every_mismatch(ls_gateway: StripeGateway, localstripe: LocalStripe, buyer: Buyer,
                                               runner: Any, database: Any):
    pm = ls_card(localstripe, buyer.user_id)
    view = service.purchase(buyer.user_id, "10.00", pm, remember=True)
    ok = runner.invoke(args=["payments", "reconcile-report"])
    assert ok.exit_code == 0, ok.output
    assert "1 succeeded intents" in ok.output and "no mismatch" in ok.output
    # A payment taken at the gateway that no purchase here records (another integration, a lost answer).
    raw = stripe.StripeClient(TEST_SECRET_KEY, base_addresses={"api": localstripe.base_url}, max_network_retries=0)
    customer = ls_gateway.retrieve_payment_intent(cast(str, view.payment_intent_id)).customer
    stray = raw.v1.payment_intents.create(cast(Any, {
        "amount": 700, "currency": "usd", "customer": customer, "payment_method": pm, "confirm": True,
        "payment_method_types": ["card"], "metadata": {"purchase_id": "999999"}}))
    # And a purchase marked succeeded here whose lot disagrees with what was paid.
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE purchases SET amount_minor = 1200 WHERE id = :id"), {"id": view.id})
    bad = runner.invoke(args=["payments", "reconcile-report"])
    assert bad.exit_code == 1
    assert stray.id in bad.output and "no purchase records it" in bad.output
    assert view.payment_intent_id in bad.output


# ---------------------------------------------------------------- localstripe's own webhook deliveries


@pytest.fixture
def served_app(app: Any) -> Iterator[str]:
    """The app on a loopback port, so that localstripe can deliver webhooks to it."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_localstripe_webhook_and_get_grant_once_whichever_comes_first(
        ls_gateway: StripeGateway, localstripe: LocalStripe, buyer: Buyer, served_app: str, database: Any):
    hook_id = f"payments-{os.getpid()}"
    # localstripe sends each event about 1 s after it, to the webhooks registered *then*: let the events of
    # earlier tests (a succeeded intent naming their purchase 1, which is this test's purchase 1 too) go out
    # to no one before registering ours.
    time.sleep(1.5)
    localstripe.register_webhook(f"{served_app}/webhooks/stripe", WEBHOOK_SECRET, webhook_id=hook_id,
                                 events=["payment_intent.succeeded"])
    try:
        pm = ls_card(localstripe, buyer.user_id, THREE_D_SECURE)
        view = service.purchase(buyer.user_id, "10.00", pm)
        assert view.payment_intent_id and view.client_secret
        localstripe.authenticate_payment_intent(view.payment_intent_id, view.client_secret)
        deadline = time.monotonic() + 8
        outcomes: list[str] = []
        while time.monotonic() < deadline and not outcomes:
            time.sleep(0.1)
            with database.engine.connect() as conn:
                outcomes = list(conn.execute(sa.text(
                    "SELECT outcome FROM webhook_events WHERE object_id = :pi"), {"pi": view.payment_intent_id})
                    .scalars())
        assert outcomes == ["granted"], "localstripe's signed payment_intent.succeeded did not arrive in 8 s"
        assert service.get_purchase(buyer.user_id, view.id).status == "succeeded"
        assert ledger.get_wallet(buyer.wallet_id).balance == TEN
    finally:
        localstripe.register_webhook(f"{served_app}/webhooks/stripe", WEBHOOK_SECRET, webhook_id=hook_id, events=[])
    audit_clean()
