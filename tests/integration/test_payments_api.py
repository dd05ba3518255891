"""Customer payment routes (DESIGN §5b) over HTTP with FakeGateway: cards, purchases, auto-recharge."""

from __future__ import annotations

from typing import Any

from credits.ledger import service as ledger
from credits.payments.fake_gateway import FakeGateway
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import THREE_D_SECURE, Buyer, audit_clean, bearer, new_buyer


def _new_card(client: Any, fake: FakeGateway, headers: dict[str, str], number: str = "4242424242424242") -> str:
    resp = client.post("/api/v1/me/payment-methods", headers=headers)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"setup_intent", "client_secret", "publishable_key", "stripe_js_url"}
    assert body["client_secret"] and body["publishable_key"].startswith("pk_")
    pm = fake.create_card_payment_method(number, 12, 2030)  # Stripe.js: confirmCardSetup
    si = fake.confirm_setup_intent(body["setup_intent"], pm)
    if si.status == "requires_action":
        fake.authenticate_setup_intent(si.id)
    return pm


def test_routes_need_a_signed_in_customer(fake: FakeGateway, client: Any):
    for method, path in (("post", "/api/v1/me/payment-methods"), ("get", "/api/v1/me/payment-methods"),
                         ("delete", "/api/v1/me/payment-methods/pm_1"), ("post", "/api/v1/me/purchases"),
                         ("get", "/api/v1/me/purchases/1"), ("put", "/api/v1/me/auto-recharge")):
        resp = getattr(client, method)(path, json={})
        assert resp.status_code == 401, (method, path)
        assert resp.mimetype == "application/problem+json"


def test_buy_with_a_new_card_keep_it_list_it_remove_it(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h)
    resp = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": pm, "remember": True},
                       headers=h)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert (body["status"], body["amount"], body["currency"], body["client_secret"]) == (
        "succeeded", "10.000000", "USD", None)
    assert body["lot"]["id"] and body["lot"]["expires_at"]
    assert client.get(f"/api/v1/me/purchases/{body['id']}", headers=h).get_json()["status"] == "succeeded"
    cards = client.get("/api/v1/me/payment-methods", headers=h).get_json()["payment_methods"]
    assert [(c["id"], c["brand"], c["last4"], c["exp_month"], c["exp_year"]) for c in cards] == [
        (pm, "visa", "4242", 12, 2030)]
    again = client.post("/api/v1/me/purchases", json={"amount": "5.00", "payment_method": pm}, headers=h)
    assert again.get_json()["status"] == "succeeded"
    assert ledger.get_wallet(buyer.wallet_id).balance == 15_000_000
    assert client.delete(f"/api/v1/me/payment-methods/{pm}", headers=h).status_code == 204
    assert client.get("/api/v1/me/payment-methods", headers=h).get_json()["payment_methods"] == []
    assert client.delete(f"/api/v1/me/payment-methods/{pm}", headers=h).status_code == 404
    gone = client.post("/api/v1/me/purchases", json={"amount": "5.00", "payment_method": pm}, headers=h)
    assert gone.status_code == 400
    audit_clean()


def test_save_a_card_without_buying(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h)
    resp = client.post("/api/v1/me/payment-methods", json={"payment_method": pm}, headers=h)
    assert resp.status_code == 201 and resp.get_json()["last4"] == "4242"
    assert [c["id"] for c in client.get("/api/v1/me/payment-methods", headers=h).get_json()["payment_methods"]] == [pm]


def test_declined_card_is_402_with_a_clear_message(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h, "4000000000000341")
    fake.decline_next("stolen_card")
    resp = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": pm}, headers=h)
    assert resp.status_code == 402
    body = resp.get_json()
    assert body["code"] == "card_declined" and "declined" in body["detail"]
    assert "stolen" not in resp.get_data(as_text=True)
    assert ledger.get_wallet(buyer.wallet_id).balance == 0


def test_three_d_secure_then_get_settles(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h, THREE_D_SECURE)
    resp = client.post("/api/v1/me/purchases", json={"amount": "20.00", "payment_method": pm}, headers=h)
    body = resp.get_json()
    assert resp.status_code == 201 and body["status"] == "requires_action" and body["client_secret"]
    intent_id = body["client_secret"].removesuffix("_secret_fake")
    fake.authenticate_payment_intent(intent_id)  # stripe.confirmCardPayment(client_secret)
    settled = client.get(f"/api/v1/me/purchases/{body['id']}", headers=h).get_json()
    assert settled["status"] == "succeeded" and settled["lot"]["id"]
    assert ledger.get_wallet(buyer.wallet_id).balance == 20_000_000


def test_purchase_input_is_checked(fake: FakeGateway, buyer: Buyer, client: Any, make: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h)
    for body in ({"amount": 10, "payment_method": pm}, {"amount": "10.00"}, {"amount": "1.00", "payment_method": pm},
                 {"amount": "10.00", "payment_method": pm, "card_number": "x"},
                 {"amount": "10.00", "payment_method": "tok_visa"}):
        assert client.post("/api/v1/me/purchases", json=body, headers=h).status_code == 400, body
    other = new_buyer(make)
    mine = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": pm}, headers=h).get_json()
    assert client.get(f"/api/v1/me/purchases/{mine['id']}", headers=bearer(other.user_id)).status_code == 404
    theft = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": pm},
                        headers=bearer(other.user_id))
    assert theft.status_code == 400
    assert ledger.get_wallet(other.wallet_id).balance == 0


def test_idempotency_key_header(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h)
    body = {"amount": "10.00", "payment_method": pm, "remember": True}
    first = client.post("/api/v1/me/purchases", json=body, headers={**h, "Idempotency-Key": "k-1"}).get_json()
    again = client.post("/api/v1/me/purchases", json=body, headers={**h, "Idempotency-Key": "k-1"}).get_json()
    assert first["id"] == again["id"] and fake.charge_count() == 1
    other = client.post("/api/v1/me/purchases", json={**body, "amount": "20.00"},
                        headers={**h, "Idempotency-Key": "k-1"})
    assert other.status_code == 409


def test_auto_recharge_settings(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    pm = _new_card(client, fake, h)
    client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": pm, "remember": True}, headers=h)
    body = {"enabled": True, "threshold": "5.00", "amount": "20.00", "payment_method": pm, "monthly_cap": "100.00"}
    resp = client.put("/api/v1/me/auto-recharge", json=body, headers=h)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {
        "enabled": True, "threshold": "5.000000", "amount": "20.000000", "payment_method": pm,
        "monthly_cap": "100.000000", "currency": "USD", "consecutive_failures": 0, "next_attempt_at": None,
        "disabled_reason": None}
    assert client.put("/api/v1/me/auto-recharge", json={**body, "monthly_cap": "1.00"}, headers=h).status_code == 400
    assert client.put("/api/v1/me/auto-recharge", json={**body, "threshold": 5}, headers=h).status_code == 400
    off = client.put("/api/v1/me/auto-recharge", json={"enabled": False}, headers=h)
    assert off.status_code == 200 and off.get_json()["enabled"] is False
    assert client.get("/api/v1/me/auto-recharge", headers=h).get_json()["enabled"] is False


def test_openapi_documents_the_payment_paths(app: Any, client: Any):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    for path in ("/api/v1/me/payment-methods", "/api/v1/me/payment-methods/{payment_method}",
                 "/api/v1/me/purchases", "/api/v1/me/purchases/{purchase_id}", "/api/v1/me/auto-recharge",
                 "/api/v1/staff/refunds", "/api/v1/staff/refunds/{refund_id}/approve", "/api/v1/staff/credit-notes"):
        assert path in paths, path
