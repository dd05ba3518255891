"""The page an emailed pay link opens (GET/POST /pay, credits/store/views.py) with FakeGateway: an auto-recharge
that needs 3-D Secure is shown with its amount and a "Confirm payment" button to anyone holding the link (no
sign-in: the token is the credential) and nothing else of the account; after the bank's check the form settles
it; unknown, expired and spent links get a readable 404 and change nothing; the token never reaches the logs.
tests/browser/test_pay_link.py drives the same page in Chromium against localstripe.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import sqlalchemy as sa

from credits import jobs
from credits.db import unit_of_work
from credits.ledger import service as ledger
from credits.notify import outbox
from credits.payments import auto_recharge, service
from credits.payments.fake_gateway import FakeGateway
from credits.web.csp import payment_page_policy
from tests.conftest import row_counts, table_snapshot
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import Buyer, audit_clean, fake_card

GONE = "This payment link has expired or was already used"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


@pytest.fixture
def link(fake: FakeGateway, buyer: Buyer, database: Any) -> dict[str, Any]:
    """The buyer kept a card after buying 10.00, spent 6.00 with auto-recharge (20.00 below 5.00) on, and the
    bank wanted the off-session top-up confirmed: the emailed pay link's token, the purchase and its intent."""
    pm = fake_card(fake, buyer.user_id)
    service.purchase(buyer.user_id, "10.00", pm, remember=True)
    auto_recharge.configure(buyer.user_id, enabled=True, payment_method=pm, threshold="5.00", amount="20.00",
                            monthly_cap="100.00")
    ledger.reserve(buyer.wallet_id, "call:1", 6_000_000)
    ledger.settle("call:1", 6_000_000)
    fake.require_authentication_next()
    assert jobs.run_once("auto-recharge") == {"requires_action": 1}
    with unit_of_work() as uow:
        ids = uow.session.execute(sa.text("SELECT id FROM outbox WHERE template = 'auto_recharge_action_required'"))
        _template, _to, context = outbox.read(uow.session, ids.scalar_one())
        purchase_id, intent_id = uow.session.execute(sa.text(
            "SELECT id, payment_intent_id FROM purchases WHERE kind = 'auto_recharge'")).one()
    assert context["link"].startswith("http://127.0.0.1:5000/pay?token=")
    return {"token": context["link"].split("token=", 1)[1], "purchase_id": purchase_id, "intent_id": intent_id}


def _status(purchase_id: int) -> str:
    return service.view(purchase_id).status


def _balance(buyer: Buyer) -> int:
    return ledger.get_wallet(buyer.wallet_id).balance


def test_a_valid_link_shows_the_amount_and_the_confirm_button_signed_out(client: Any, app: Any, buyer: Buyer,
                                                                        link: dict[str, Any], database: Any):
    before = table_snapshot(database)
    r = client.get(f"/pay?token={link['token']}")
    assert r.status_code == 200, r.text
    assert "Confirm your payment" in r.text and "20.00 USD" in r.text
    assert re.search(r'<button type="submit" id="confirm">Confirm payment</button>', r.text)
    secret = re.search(r'data-client-secret="([^"]+)"', r.text)
    assert secret and secret.group(1).startswith(f"{link['intent_id']}_secret")
    assert re.search(rf'name="token" value="{re.escape(link["token"])}"', r.text)
    # Stripe.js from the configured origin and our own script, under the payment-page CSP; never cached.
    assert re.findall(r'<script[^>]*\bsrc="([^"]+)"', r.text) == ["https://js.stripe.com/v3/", "/assets/pay.js"]
    with app.app_context():
        assert r.headers["Content-Security-Policy"] == payment_page_policy()
    assert "no-store" in r.headers["Cache-Control"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)
    with client.get("/assets/pay.js") as js:
        assert js.status_code == 200 and "confirmCardPayment" in js.text
    # Nothing of the account but the amount: no address, account number, balance or card.
    for private in (buyer.email, buyer.account_number, "4242", "4.00 USD", "Dashboard"):
        assert private not in r.text
    # While the bank waits, opening the link (or a mail scanner fetching it) changes nothing.
    assert table_snapshot(database) == before
    assert _status(link["purchase_id"]) == "requires_action"


def test_confirming_after_3d_secure_adds_the_credit_once_and_spends_the_link(client: Any, fake: FakeGateway,
                                                                             buyer: Buyer, link: dict[str, Any],
                                                                             database: Any):
    page = client.get(f"/pay?token={link['token']}")
    before = _balance(buyer)
    fake.authenticate_payment_intent(link["intent_id"])  # stripe.confirmCardPayment in pay.js
    r = client.post("/pay", data={"csrf_token": csrf_of(page.text), "token": link["token"]})
    assert r.status_code == 200, r.text
    assert "20.00 USD was added to your account." in r.text
    assert buyer.email not in r.text and buyer.account_number not in r.text
    assert _balance(buyer) == before + 20_000_000
    assert _status(link["purchase_id"]) == "succeeded"
    counts = row_counts(database)
    again = client.get(f"/pay?token={link['token']}")
    assert again.status_code == 404 and GONE in again.text
    assert "20.00" not in again.text
    assert row_counts(database) == counts
    audit_clean()


def test_a_failed_bank_check_says_so_and_charges_nothing(client: Any, fake: FakeGateway, buyer: Buyer,
                                                         link: dict[str, Any]):
    page = client.get(f"/pay?token={link['token']}")
    before = _balance(buyer)
    fake.authenticate_payment_intent(link["intent_id"], success=False)  # "Fail authentication" in the dialog
    r = client.post("/pay", data={"csrf_token": csrf_of(page.text), "token": link["token"]})
    assert r.status_code == 200, r.text
    assert "The payment did not go through" in r.text
    assert "the confirmation with your bank failed. Nothing was charged." in r.text
    assert _balance(buyer) == before and _status(link["purchase_id"]) == "failed"
    assert client.get(f"/pay?token={link['token']}").status_code == 404
    audit_clean()


def test_a_dialog_left_unanswered_keeps_the_button(client: Any, buyer: Buyer, link: dict[str, Any]):
    page = client.get(f"/pay?token={link['token']}")
    r = client.post("/pay", data={"csrf_token": csrf_of(page.text), "token": link["token"]})
    assert r.status_code == 200
    assert "Your bank has not confirmed the payment yet, so nothing was charged." in r.text
    assert "Confirm payment" in r.text
    assert _status(link["purchase_id"]) == "requires_action"


def test_unknown_expired_and_spent_links_are_a_readable_404_and_change_nothing(client: Any, fake: FakeGateway,
                                                                             clock: Any, link: dict[str, Any],
                                                                             database: Any):
    before = table_snapshot(database)
    for token in ("", "short", "x" * 43, link["token"][:-1] + ("A" if link["token"][-1] != "A" else "B"),
                  "y" * 500):
        r = client.get("/pay", query_string={"token": token})
        assert r.status_code == 404, token
        assert GONE in r.text and "Payment links work once, for 72 hours" in r.text
        assert "Confirm payment" not in r.text and "no-store" in r.headers["Cache-Control"]
    assert client.get("/pay").status_code == 404
    page = client.get(f"/pay?token={link['token']}")  # a real page, for its form token
    r = client.post("/pay", data={"csrf_token": csrf_of(page.text), "token": "x" * 43})
    assert r.status_code == 404 and GONE in r.text
    # Without this browser's form token a POST is refused before anything is looked at.
    r = client.application.test_client().post("/pay", data={"csrf_token": csrf_of(page.text),
                                                               "token": link["token"]})
    assert r.status_code == 400 and "This form has expired" in r.text
    assert client.post("/pay", data={"token": link["token"]}).status_code == 400
    assert table_snapshot(database) == before

    clock.advance(hours=72, minutes=1)  # expired (CREDITS_PAY_LINK_HOURS)
    r = client.get(f"/pay?token={link['token']}")
    assert r.status_code == 404 and GONE in r.text
    r = client.post("/pay", data={"csrf_token": csrf_of(page.text), "token": link["token"]})
    assert r.status_code == 404 and GONE in r.text
    assert table_snapshot(database) == before


def test_a_spent_link_changes_nothing(client: Any, fake: FakeGateway, link: dict[str, Any], database: Any):
    fake.authenticate_payment_intent(link["intent_id"])
    assert client.get(f"/pay?token={link['token']}").status_code == 200  # settles: succeeded, link spent
    before = table_snapshot(database)
    page = client.get(f"/pay?token={link['token']}")
    assert page.status_code == 404 and GONE in page.text
    assert table_snapshot(database) == before


def test_the_token_is_not_logged(client: Any, fake: FakeGateway, link: dict[str, Any], caplog: Any, capfd: Any):
    caplog.set_level(logging.DEBUG)
    page = client.get(f"/pay?token={link['token']}")
    fake.authenticate_payment_intent(link["intent_id"])
    client.post("/pay", data={"csrf_token": csrf_of(page.text), "token": link["token"]})
    client.get(f"/pay?token={link['token']}")
    client.get("/pay?token=" + "z" * 43)
    paths = [getattr(r, "path", None) for r in caplog.records if r.name == "credits.request"]
    assert paths.count("/pay") == 4  # the requests were logged, by path
    for record in caplog.records:
        assert link["token"] not in record.getMessage()
        assert all(link["token"] not in str(v) for v in vars(record).values())
        assert "z" * 43 not in record.getMessage()
    out, err = capfd.readouterr()
    assert link["token"] not in out + err
