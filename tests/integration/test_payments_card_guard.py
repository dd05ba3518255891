"""CHECKLIST I55: a card number in any JSON, form or query field anywhere is refused (400), never stored or
logged; the switch API's phone-number fields are exempt (documented in credits/web/card_guard.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from credits.payments.fake_gateway import FakeGateway
from tests.conftest import table_snapshot
from tests.integration.payments_fixtures import *  # noqa: F403
from tests.integration.payments_fixtures import Buyer, bearer

PAN = "4242424242424242"
SHAPES = [PAN, "4242 4242 4242 4242", "4242-4242-4242-4242", "my card is 4000 0025 0000 3155, thanks"]


def _refused(resp: Any) -> bool:
    if resp.mimetype == "text/html":  # a page, not the API: the same refusal, readable
        return resp.status_code == 400 and "Card numbers are not accepted here" in resp.get_data(as_text=True)
    body = resp.get_json(silent=True) or {}
    return resp.status_code == 400 and body.get("code") == "card_number_refused"


def _digits_anywhere(text: str) -> bool:
    squashed = "".join(ch for ch in text if ch.isdigit())
    return PAN in squashed or "4000002500003155" in squashed


@pytest.mark.parametrize("shape", SHAPES)
def test_I55_json_fields_anywhere(fake: FakeGateway, buyer: Buyer, client: Any, shape: str):
    h = bearer(buyer.user_id)
    cases = [
        ("post", "/api/v1/me/purchases", {"amount": "10.00", "payment_method": shape}),
        ("post", "/api/v1/me/purchases", {"amount": "10.00", "payment_method": "pm_1", "card": {"number": shape}}),
        ("put", "/api/v1/me/auto-recharge", {"enabled": True, "notes": [1, {"x": shape}]}),
        ("post", "/api/v1/auth/register", {"email": "a@example.com", "password": "correct horse battery",
                                           "name": shape, "date_of_birth": "1990-01-01", "country": "SG"}),
        ("post", "/api/v1/complaints", {"message": shape}),
        ("post", "/api/v1/no-such-route", {shape: "as a key"}),
    ]
    for method, path, body in cases:
        resp = getattr(client, method)(path, json=body, headers=h)
        assert _refused(resp), (path, resp.status_code, resp.get_data(as_text=True))
        assert not _digits_anywhere(resp.get_data(as_text=True))


def test_I55_json_number_form_field_and_query(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    assert _refused(client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": int(PAN)},
                                headers=h))
    assert _refused(client.post("/api/v1/auth/login", data={"email": "a@example.com", "password": PAN}))
    assert _refused(client.post("/some/form", data={"cc": "4242 4242 4242 4242"},
                                content_type="multipart/form-data"))
    assert _refused(client.get(f"/api/v1/me/payment-methods?q={PAN}", headers=h))
    assert _refused(client.post("/api/v1/me/purchases", data=f'{{"amount": "{PAN}"}}',
                                content_type="application/merge-patch+json", headers=h))


def test_I55_not_a_card_number_passes(fake: FakeGateway, buyer: Buyer, client: Any):
    h = bearer(buyer.user_id)
    for value in ("4242424242424241", "424242424242", "12345678901234567890", "+6561234567", "0000000000000000"):
        resp = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": value}, headers=h)
        assert not _refused(resp), value


def test_I55_switch_number_fields_are_exempt_other_switch_fields_are_not(app: Any, client: Any):
    luhn_phone = "4242424242424242"  # a 16-digit dialled number that happens to pass Luhn
    authorize = client.post("/api/v1/calls/authorize", json={"call_id": "c1", "caller": luhn_phone,
                                                              "callee": luhn_phone})
    assert authorize.status_code == 401  # past the guard: refused for the missing API key, not as a card
    cdrs = client.post("/api/v1/cdrs", json={"cdrs": [{"call_id": "c2", "caller": "+65123", "callee": luhn_phone}]})
    assert cdrs.status_code == 401
    assert client.get(f"/api/v1/quote?caller=%2B65123&callee={luhn_phone}").status_code == 401
    smuggled = client.post("/api/v1/calls/authorize", json={"call_id": luhn_phone, "caller": "+65123",
                                                             "callee": "+14155550100"})
    assert _refused(smuggled)
    assert _refused(client.post("/api/v1/me/purchases", json={"caller": luhn_phone}))  # exempt only on the switch


def test_I55_never_stored_or_logged(fake: FakeGateway, buyer: Buyer, client: Any, database: Any,
                                    caplog: pytest.LogCaptureFixture):
    h = bearer(buyer.user_id)
    before = table_snapshot(database)
    with caplog.at_level(logging.DEBUG):
        for shape in SHAPES:
            client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": shape}, headers=h)
            client.post("/api/v1/me/payment-methods", json={"payment_method": shape}, headers=h)
            client.post("/api/v1/auth/register", json={"email": "b@example.com", "password": shape, "name": "B",
                                                       "date_of_birth": "1990-01-01", "country": "SG"})
            client.post("/api/v1/staff/refunds", json={"purchase_id": 1, "amount": "1.00", "reason": shape},
                        headers=h)
            client.post("/api/v1/auth/login", data={"email": "b@example.com", "password": shape})
    assert caplog.records, "the guard logs that it refused something (without the value)"
    assert not _digits_anywhere(caplog.text)
    for record in caplog.records:
        assert not _digits_anywhere(repr(record.__dict__))
    after = table_snapshot(database)
    assert not _digits_anywhere(repr(after))
    # Sessions may have been touched (last seen); nothing else.
    changed = {name for name in after if after[name] != before[name]}
    assert changed <= {"sessions"}, changed
