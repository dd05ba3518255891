"""The customer's own account API (DESIGN §5b): profile, email and phone changes, wallet, statement, calls."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits.ledger import service as ledger
from tests.conftest import table_snapshot
from tests.integration.accounts_helpers import PASSWORD, login, outbox, signed_in
from tests.integration.switch_fixtures import plan_fixture, switch_fixture, switch_key_fixture  # noqa: F401

USD = 1_000_000


@pytest.fixture
def me(client):
    csrf = signed_in(client)
    return csrf, client.get("/api/v1/me").json


def test_get_me_returns_the_decrypted_profile(client, me):
    _csrf, profile = me
    assert profile["email"] == "ada@example.com" and profile["name"] == "Ada Lovelace"
    assert profile["date_of_birth"] == "1990-04-21" and profile["country"] == "SG"
    assert profile["role"] == "customer" and profile["currency"] == "USD" and profile["phones"] == []
    assert profile["csrf_token"]
    assert client.get("/api/v1/me").headers["Cache-Control"] == "no-store"


def test_unauthenticated_me_is_401_problem(client):
    for path in ("/api/v1/me", "/api/v1/me/wallet", "/api/v1/me/statement", "/api/v1/me/calls",
                 "/api/v1/me/sessions"):
        r = client.get(path)
        assert r.status_code == 401 and r.mimetype == "application/problem+json"
        assert "detail" not in r.json


def test_patch_name_and_country(client, me):
    csrf, _ = me
    r = client.patch("/api/v1/me", json={"name": "Augusta Ada King", "country": "gb"}, headers=csrf)
    assert r.status_code == 200 and r.json["name"] == "Augusta Ada King" and r.json["country"] == "GB"
    assert client.get("/api/v1/me").json["name"] == "Augusta Ada King"


def test_patch_bad_input_is_400_and_changes_nothing(client, me, database):
    csrf, _ = me
    before = table_snapshot(database)
    for body in ({"name": ""}, {"country": "XX"}, {"country": "SGP"}, {"email": "not-an-address",
                 "current_password": PASSWORD}, {"phone": "+6591234567"}, {"role": "admin"},
                 {"status": "active"}, {"date_of_birth": "2020-01-01"}, {"phone": "12", "current_password": PASSWORD},
                 {"phone": "abc-def", "current_password": PASSWORD}):
        r = client.patch("/api/v1/me", json=body, headers=csrf)
        assert r.status_code == 400, (body, r.json)
        assert r.mimetype == "application/problem+json"
    assert table_snapshot(database) == before


def test_email_change_needs_the_password_and_confirmation_and_tells_both_addresses(client, me, database):
    csrf, _ = me
    wrong = client.patch("/api/v1/me", json={"email": "ada@new.example", "current_password": "wrong one"},
                         headers=csrf)
    assert wrong.status_code == 403 and wrong.json["code"] == "reauthentication_failed"
    r = client.patch("/api/v1/me", json={"email": "ada@new.example", "current_password": PASSWORD}, headers=csrf)
    assert r.status_code == 200 and r.json["email_change_pending"] is True
    assert r.json["email"] == "ada@example.com"  # unchanged until confirmed
    [(_t, to, context)] = outbox("email_change_confirm")
    assert to == "ada@new.example"
    v = client.post("/api/v1/auth/verify-email", json={"token": context["token"]})
    assert v.status_code == 200 and v.json["purpose"] == "change_email"
    assert client.get("/api/v1/me").json["email"] == "ada@new.example"
    changed = outbox("email_changed")
    assert sorted(m[1] for m in changed) == ["ada@example.com", "ada@new.example"]
    client.delete_cookie("__Host-session")
    assert login(client, "ada@new.example").status_code == 200
    assert login(client, "ada@example.com").status_code == 401


def test_email_change_to_a_taken_address_reveals_nothing(client, me, app):
    csrf, _ = me
    other = app.test_client()
    signed_in(other, "bob@example.com")
    r = client.patch("/api/v1/me", json={"email": "bob@example.com", "current_password": PASSWORD}, headers=csrf)
    assert r.status_code == 200 and r.json["email_change_pending"] is True
    assert outbox("email_change_confirm") == []
    assert [m[1] for m in outbox("account_exists")] == ["bob@example.com"]


def test_phone_number_becomes_a_caller_number_unique_across_accounts(client, me, app, switch, plan):
    csrf, _ = me
    assert client.patch("/api/v1/me", json={"phone": "+65 9123 4567"}, headers=csrf).status_code == 400
    r = client.patch("/api/v1/me", json={"phone": "+65 9123 4567", "current_password": PASSWORD}, headers=csrf)
    assert r.status_code == 200 and r.json["phones"] == ["+6591234567"]
    # The switch now knows the caller by it.
    wallet = client.get("/api/v1/me/wallet").json
    assert switch.balance(caller="+6591234567").json["account"] == wallet["account_number"]
    other = app.test_client()
    other_csrf = signed_in(other, "bob@example.com")
    taken = other.patch("/api/v1/me", json={"phone": "+6591234567", "current_password": PASSWORD},
                        headers=other_csrf)
    assert taken.status_code == 409


def test_wallet_shows_balance_available_and_lots_with_expiry(client, me, clock):
    _csrf, profile = me
    wallet = ledger.wallet_of_user(profile["id"])
    soon = clock.now() + timedelta(days=10)
    ledger.grant(wallet.id, 5 * USD, "purchase", expires_at=soon)
    ledger.grant(wallet.id, 2_500_000, "promo")
    ledger.reserve(wallet.id, "call-1", 1 * USD)
    r = client.get("/api/v1/me/wallet")
    assert r.status_code == 200
    body = r.json
    assert (body["balance"], body["available"], body["held"], body["currency"]) == (
        "7.500000", "6.500000", "1.000000", "USD")
    assert [lot["remaining"] for lot in body["lots"]] == ["5.000000", "2.500000"]
    assert body["lots"][0]["expires_at"] == soon.isoformat().replace("+00:00", "Z")
    assert body["next_expiry_at"] == body["lots"][0]["expires_at"]


def test_statement_pages_with_running_balance(client, me):
    _csrf, profile = me
    wallet = ledger.wallet_of_user(profile["id"])
    for amount in (1, 2, 3):
        ledger.grant(wallet.id, amount * USD, "purchase")
    first = client.get("/api/v1/me/statement?limit=2").json
    assert [x["amount"] for x in first["lines"]] == ["3.000000", "2.000000"]
    assert [x["balance_after"] for x in first["lines"]] == ["6.000000", "3.000000"]
    second = client.get(f"/api/v1/me/statement?limit=2&after={first['next']}").json
    assert [x["balance_after"] for x in second["lines"]] == ["1.000000"] and second["next"] is None
    for bad in ("?limit=0", "?limit=1000", "?after=abc", "?after=-1", "?sort=asc"):
        r = client.get("/api/v1/me/statement" + bad)
        assert r.status_code == 400, bad


@pytest.mark.parametrize("query", [
    {"start": "9999-12-31T23:59:59-14:00"},
    {"end": "0001-01-01T00:00:00+14:00"},
    {"end": "0001-01-01T00:00:00+14:00", "format": "csv"},
], ids=["start-after-year-9999-in-utc", "end-before-year-1-in-utc", "csv"])
def test_calls_range_without_a_utc_equivalent_is_400_and_changes_nothing(client, me, database, query):
    # Found by the API fuzz test: the time overflowed when converted to UTC for the query (a 500).
    before = table_snapshot(database)
    r = client.get("/api/v1/me/calls", query_string=query)
    assert r.status_code == 400 and r.mimetype == "application/problem+json", r.get_data(as_text=True)
    assert r.json["code"] == "invalid_input" and r.json["field"] == next(iter(query))
    assert table_snapshot(database) == before
    latest = client.get("/api/v1/me/calls", query_string={"start": "9999-12-31T23:59:59+00:00"})
    assert latest.status_code == 200 and latest.json["calls"] == []


def test_calls_json_and_csv(client, me, switch, plan, clock):
    csrf, profile = me
    client.patch("/api/v1/me", json={"phone": "+6591234567", "current_password": PASSWORD}, headers=csrf)
    ledger.grant(ledger.wallet_of_user(profile["id"]).id, 10 * USD, "purchase")
    for i in range(3):
        assert switch.authorize(f"call-{i}", "+6591234567", "+6561234567").json["authorized"]
        switch.complete(f"call-{i}", 125)
    page = client.get("/api/v1/me/calls?limit=2").json
    assert [c["call_id"] for c in page["calls"]] == ["call-2", "call-1"] and page["next"]
    assert page["calls"][0]["charged"] == "0.025830" and page["currency"] == "USD"
    rest = client.get(f"/api/v1/me/calls?limit=2&after={page['next']}").json
    assert [c["call_id"] for c in rest["calls"]] == ["call-0"]
    csv = client.get("/api/v1/me/calls?format=csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).strip().splitlines()
    assert lines[0].startswith("call_id,") and len(lines) == 4
    start = (clock.now() + timedelta(hours=1)).isoformat()
    empty = client.get("/api/v1/me/calls", query_string={"start": start})
    assert empty.status_code == 200 and empty.json["calls"] == []
    for bad in ({"format": "xml"}, {"start": "yesterday"}, {"start": "2026-11-22T10:00:00"},
                {"start": start, "end": start}):
        assert client.get("/api/v1/me/calls", query_string=bad).status_code == 400, bad
