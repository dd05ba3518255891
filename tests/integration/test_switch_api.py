"""Switch API contract (DESIGN §5): every endpoint's fields, decimal-string amounts, refusals as answers."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from credits.accounts import service as accounts
from credits.calls import service as calls
from credits.ledger import service as ledger
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    FREE_CALLEE,
    NO_RATE_CALLEE,
    SF_CALLEE,
    SG_CALLEE,
    UK_CALLEE,
    US_CALLEE,
    USD,
    assert_audit_clean,
    call_row,
    callers_fixture,
    holds_of,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
)

DECIMAL = re.compile(r"^[0-9]+\.[0-9]{6}$")
AUTHORIZED_FIELDS = {"call_id", "authorized", "max_duration_s", "reserved", "currency", "rate", "balance", "available"}
RATE_FIELDS = {"prefix", "destination", "rate_per_minute", "connect_fee", "first_increment_s", "next_increment_s"}


def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    return body


def assert_decimals(body: dict[str, Any], *names: str) -> None:
    for name in names:
        assert isinstance(body[name], str) and DECIMAL.match(body[name]), (name, body[name])


# ---------------------------------------------------------------- authorize


def test_authorize_answers_every_field_as_designed(switch, callers):
    caller = callers(credit=10 * USD)
    body = ok(switch.authorize("a84b4c76e66710@10.0.0.1", caller.phone, SG_CALLEE))
    assert set(body) == AUTHORIZED_FIELDS
    # 10.00 affords far more than the 7200 s cap; the hold is cost(7200) = 0.0123 * 120 min = 1.476000.
    assert body == {
        "call_id": "a84b4c76e66710@10.0.0.1", "authorized": True, "max_duration_s": 7200, "reserved": "1.476000",
        "currency": "USD", "balance": "10.000000", "available": "8.524000",
        "rate": {"prefix": "65", "destination": "Singapore", "rate_per_minute": "0.012300",
                 "connect_fee": "0.000000", "first_increment_s": 60, "next_increment_s": 6},
    }
    assert_decimals(body, "reserved", "balance", "available")
    assert_decimals(body["rate"], "rate_per_minute", "connect_fee")
    wallet = caller.wallet()
    assert (wallet.balance, wallet.held) == (10 * USD, 1_476_000)
    [hold] = holds_of(caller.wallet_id)
    assert (hold.amount, hold.status) == (1_476_000, "active")
    assert hold.expires_at == switch_now() + timedelta(seconds=7200 + 120)  # max duration + grace
    row = call_row("a84b4c76e66710@10.0.0.1")
    assert (row.status, row.caller, row.callee, row.max_duration_s, row.reserved) == (
        "authorized", caller.phone, SG_CALLEE, 7200, 1_476_000)


def switch_now() -> Any:
    from credits import clock

    return clock.now()


@pytest.mark.parametrize(("credit", "callee", "max_s", "reserved", "prefix"), [
    # 0.05 at 0.0123/min, 60/6: k = floor((60 * 50_000 - 12_300 * 60) / (12_300 * 6)) = 30 -> 60 + 180 s,
    # cost(240) = 12_300 * 240 / 60 = 49_200 (cost(246) = 50_430 would not fit).
    (50_000, SG_CALLEE, 240, "0.049200", "65"),
    # 0.05 at 0.008/min, 60/60: k = floor((3_000_000 - 480_000) / 480_000) = 5 -> 360 s, cost 48_000.
    (50_000, US_CALLEE, 360, "0.048000", "1"),
    # Longest prefix: +1415... is rated 1415 (0.006/min, 30/6), not 1. (1_000_000 * 60 - 6_000 * 30) /
    # 36_000 = 1661.67 -> 30 + 9966 = 9996 s, capped at 7200; cost(7200) = 6_000 * 120 = 720_000.
    (1 * USD, SF_CALLEE, 7200, "0.720000", "1415"),
    # Connect fee 0.05 and 0.05/min, 1/1: with 1.00, (950_000 * 60 - 50_000) // 50_000 = 1139 -> 1140 s,
    # cost = 0.05 + 0.05 * 19 min = exactly 1.000000.
    (1 * USD, UK_CALLEE, 1140, "1.000000", "44"),
    # Exactly the first increment: 0.0123 affords 60 s of Singapore and not one increment more.
    (12_300, SG_CALLEE, 60, "0.012300", "65"),
    # A free destination is allowed the cap; a token hold of one micro-unit tracks the call.
    (1 * USD, FREE_CALLEE, 7200, "0.000001", "1800"),
])
def test_authorize_max_duration_and_hold_by_hand(switch, callers, credit, callee, max_s, reserved, prefix):
    caller = callers(credit=credit)
    body = ok(switch.authorize("call-1", caller.phone, callee))
    assert (body["authorized"], body["max_duration_s"], body["reserved"], body["rate"]["prefix"]) == (
        True, max_s, reserved, prefix)
    held = caller.wallet().held
    assert body["available"] == f"{(credit - held) // USD}.{(credit - held) % USD:06d}"


def refusal(call_id: str, reason: str) -> dict[str, Any]:
    return {"call_id": call_id, "authorized": False, "max_duration_s": 0, "reason": reason}


def assert_refused_writing_nothing(switch, database, call_id, caller, callee, reason, **extra):
    before = table_snapshot(database)
    body = ok(switch.authorize(call_id, caller, callee, **extra))
    assert body == refusal(call_id, reason)
    assert table_snapshot(database) == before


def test_refused_insufficient_credit(switch, callers, database):
    broke = callers(credit=0)
    almost = callers(credit=12_299)  # one micro-unit short of the first 60 s to Singapore
    switch.balance(caller=broke.phone)  # the key's last-used time is written once, before the snapshots
    assert_refused_writing_nothing(switch, database, "c-broke", broke.phone, SG_CALLEE, "insufficient_credit")
    assert_refused_writing_nothing(switch, database, "c-almost", almost.phone, SG_CALLEE, "insufficient_credit")
    # The UK connect fee alone is 0.05: 0.0499 cannot start a call there.
    poor = callers(credit=49_999)
    assert_refused_writing_nothing(switch, database, "c-poor", poor.phone, UK_CALLEE, "insufficient_credit")


def test_refused_unknown_caller_and_no_rate(switch, callers, database):
    caller = callers()
    switch.balance(caller=caller.phone)
    assert_refused_writing_nothing(switch, database, "c-1", "+6599999999", SG_CALLEE, "unknown_caller")
    assert_refused_writing_nothing(switch, database, "c-2", caller.phone, SG_CALLEE, "unknown_caller",
                                   account="1234567890")
    assert_refused_writing_nothing(switch, database, "c-3", caller.phone, NO_RATE_CALLEE, "no_rate")


@pytest.mark.parametrize(("status", "reason"), [("frozen", "account_frozen"), ("closed", "account_closed")])
def test_refused_frozen_and_closed_accounts(switch, callers, database, status, reason):
    caller = callers(status=status)
    switch.balance(caller=caller.phone)
    assert_refused_writing_nothing(switch, database, "c-1", caller.phone, SG_CALLEE, reason)
    assert_refused_writing_nothing(switch, database, "c-2", "+6599999999", SG_CALLEE, reason,
                                   account=caller.number)


def test_refused_too_many_calls(switch, callers, database):
    caller = callers()
    calls.set_max_concurrent_calls(caller.wallet_id, 2)
    assert ok(switch.authorize("c-1", caller.phone, SG_CALLEE))["authorized"]
    assert ok(switch.authorize("c-2", caller.phone, SG_CALLEE))["authorized"]
    assert_refused_writing_nothing(switch, database, "c-3", caller.phone, SG_CALLEE, "too_many_calls")
    ok(switch.complete("c-1", 30))
    assert ok(switch.authorize("c-3", caller.phone, SG_CALLEE))["authorized"]


def test_authorize_by_account_number(switch, callers):
    caller = callers(credit=50_000)
    other = callers(credit=10 * USD)
    # The account wins over the caller number (a trunk's calls come from many numbers).
    body = ok(switch.authorize("c-1", other.phone, SG_CALLEE, account=caller.number))
    assert (body["authorized"], body["max_duration_s"], body["balance"]) == (True, 240, "0.050000")
    assert call_row("c-1").wallet_id == caller.wallet_id
    assert other.wallet().held == 0
    # "Instead" of the caller: a switch that only knows the account may leave the caller number out.
    body = ok(switch.post("/calls/authorize", {"call_id": "c-2", "callee": US_CALLEE, "account": other.number}))
    assert (body["authorized"], body["max_duration_s"], body["rate"]["prefix"]) == (True, 7200, "1")
    assert call_row("c-2").wallet_id == other.wallet_id


def test_caller_numbers_are_matched_in_any_international_form(switch, callers):
    caller = callers(phone="+6561230000")
    for i, form in enumerate(["+6561230000", "006561230000", "0116561230000"]):
        assert ok(switch.authorize(f"c-{i}", form, SG_CALLEE))["authorized"], form
    assert ok(switch.authorize("c-9", "6561230000", SG_CALLEE))["authorized"]
    assert caller.wallet().held == 4 * 1_476_000


# ---------------------------------------------------------------- update


def test_update_answers_authorized_and_max_duration(switch, callers):
    caller = callers(credit=50_000)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    assert ok(switch.update("c-1", 100)) == {"authorized": True, "max_duration_s": 240}
    assert ok(switch.update("c-1", 240)) == {"authorized": False, "max_duration_s": 240}
    ok(switch.complete("c-1", 240))
    assert ok(switch.update("c-1", 10)) == {"authorized": False, "max_duration_s": 240}


def test_update_extends_the_call_with_credit_bought_during_it(switch, callers):
    caller = callers(credit=50_000)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    ledger.grant(caller.wallet_id, 1 * USD, "purchase")
    # Hold 49_200 + available 1_000_800 = 1_050_000: k = floor((63_000_000 - 738_000) / 73_800) = 843,
    # 60 + 843 * 6 = 5118 s, and the hold grows to cost(5118) = 12_300 * 5118 / 60 = 1_049_190.
    assert ok(switch.update("c-1", 200)) == {"authorized": True, "max_duration_s": 5118}
    wallet = caller.wallet()
    assert (wallet.balance, wallet.held) == (1_050_000, 1_049_190)
    [hold] = holds_of(caller.wallet_id)
    assert hold.amount == 1_049_190
    # The deadline moves with it: answered 200 s ago, 5118 s allowed, plus the grace.
    assert hold.expires_at == switch_now() - timedelta(seconds=200) + timedelta(seconds=5118 + 120)
    assert call_row("c-1").max_duration_s == 5118
    # 5000 s bill 60 + ceil(4940 / 6) * 6 = 5004 s: 12_300 * 5004 / 60 = 1_025_820.
    body = ok(switch.complete("c-1", 5000))
    assert (body["charged"], body["billed_duration_s"], body["balance"]) == ("1.025820", 5004, "0.024180")
    assert_audit_clean()


def test_update_without_new_credit_keeps_the_hold(switch, callers, database):
    caller = callers(credit=50_000)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    before = table_snapshot(database)
    assert ok(switch.update("c-1", 60)) == {"authorized": True, "max_duration_s": 240}
    assert table_snapshot(database) == before


# ---------------------------------------------------------------- complete


def test_complete_answers_every_field_as_designed(switch, callers):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, US_CALLEE))
    body = ok(switch.complete("c-1", 125, answered_at="2026-11-22T10:00:00Z", ended_at="2026-11-22T10:02:05Z",
                              end_reason="bye"))
    # DESIGN §5's example: 125 s at 60/60 bill 180 s; 0.008/min * 3 min = 0.024000.
    assert body == {"call_id": "c-1", "charged": "0.024000", "billed_duration_s": 180, "balance": "9.976000"}
    assert_decimals(body, "charged", "balance")


def test_complete_by_hand_sub_cent_rate(switch, callers):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    # 60/6 at 0.0123/min for 125 s: 60 + ceil(65 / 6) * 6 = 126 billed s, 12_300 * 126 / 60 = 25_830.
    body = ok(switch.complete("c-1", 125))
    assert body == {"call_id": "c-1", "charged": "0.025830", "billed_duration_s": 126, "balance": "9.974170"}
    wallet = caller.wallet()
    assert (wallet.balance, wallet.held) == (9_974_170, 0)
    assert_audit_clean()


# ---------------------------------------------------------------- batch CDRs, balance, quote


def test_cdrs_answer_one_result_per_item(switch, callers):
    caller = callers(credit=10 * USD)
    body = ok(switch.cdrs([
        {"call_id": "cdr-1", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 125,
         "answered_at": "2026-11-22T11:00:00Z", "disposition": "answered"},
        {"call_id": "cdr-2", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 1.5,
         "answered_at": "2026-11-22T11:00:00Z"},
    ]))
    assert body == {"results": [
        {"call_id": "cdr-1", "status": "charged", "charged": "0.025830", "error": None},
        {"call_id": "cdr-2", "status": "rejected", "charged": "0.000000", "error": body["results"][1]["error"]},
    ]}
    assert "duration_s" in body["results"][1]["error"]


def test_balance_by_caller_and_by_account(switch, callers):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    expected = {"account": caller.number, "balance": "10.000000", "available": "8.524000", "currency": "USD",
                "next_expiry_at": (switch_now() + timedelta(days=180)).isoformat()}
    assert ok(switch.balance(caller=caller.phone)) == expected
    assert ok(switch.balance(account=caller.number)) == expected
    # A query string written by hand: '+' decodes to a space, which is taken for the '+' it was.
    raw = switch.client.get(f"/api/v1/balance?caller={caller.phone}", headers=switch.headers())
    assert ok(raw) == expected
    resp = switch.balance(caller="+6599999999")
    assert resp.status_code == 404 and resp.mimetype == "application/problem+json"


def test_quote_reserves_nothing(switch, callers, database):
    caller = callers(credit=50_000)
    ok(switch.balance(caller=caller.phone))
    before = table_snapshot(database)
    body = ok(switch.quote(caller=caller.phone, callee=SG_CALLEE))
    assert body == {"authorized": True, "max_duration_s": 240, "reason": None, "currency": "USD",
                    "available": "0.050000",
                    "rate": {"prefix": "65", "destination": "Singapore", "rate_per_minute": "0.012300",
                             "connect_fee": "0.000000", "first_increment_s": 60, "next_increment_s": 6}}
    assert ok(switch.quote(account=caller.number, callee=UK_CALLEE))["reason"] == "insufficient_credit"
    assert ok(switch.quote(caller=caller.phone, callee=NO_RATE_CALLEE))["reason"] == "no_rate"
    assert ok(switch.quote(caller="+6599999999", callee=SG_CALLEE))["reason"] == "unknown_caller"
    assert table_snapshot(database) == before


def test_quote_follows_the_concurrent_call_share(switch, callers):
    caller = callers(credit=3 * USD)
    calls.set_max_concurrent_calls(caller.wallet_id, 3)
    # A third of 3.00 on the UK rate: 1140 s, exactly as for 1.00 alone.
    assert ok(switch.quote(caller=caller.phone, callee=UK_CALLEE))["max_duration_s"] == 1140
    accounts.set_status(caller.account.user_id, "frozen")
    assert ok(switch.quote(caller=caller.phone, callee=UK_CALLEE))["reason"] == "account_frozen"


def test_openapi_documents_the_switch_api(client, app):
    doc = client.get("/api/v1/openapi.json").get_json()
    for path in ("/api/v1/calls/authorize", "/api/v1/calls/{call_id}/update", "/api/v1/calls/{call_id}/complete",
                 "/api/v1/cdrs", "/api/v1/balance", "/api/v1/quote"):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/api/v1/cdrs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    items = schemas[body["$ref"].rsplit("/", 1)[1]]["properties"]["cdrs"]["items"]
    cdr = schemas[items["allOf"][0]["$ref"].rsplit("/", 1)[1]]  # the items' shape is documented (DESIGN §5)
    assert set(cdr["properties"]) == {"call_id", "caller", "callee", "duration_s", "answered_at", "disposition",
                                      "account"}
    assert set(cdr["required"]) == {"call_id", "callee", "duration_s", "answered_at"}


def test_balance_and_quote_do_not_count_credit_that_has_expired(switch, callers, clock, database):
    start = clock.now()
    caller = callers(credit=1 * USD, expires_at=start + timedelta(days=1))
    ledger.grant(caller.wallet_id, 50_000, "purchase", expires_at=start + timedelta(days=30))
    clock.advance(days=2)  # the 1.00 lot has expired; the expiry job has not run yet
    ok(switch.balance(caller=caller.phone))
    before = table_snapshot(database)
    assert ok(switch.balance(caller=caller.phone)) == {
        "account": caller.number, "balance": "0.050000", "available": "0.050000", "currency": "USD",
        "next_expiry_at": (start + timedelta(days=30)).isoformat()}
    assert ok(switch.quote(caller=caller.phone, callee=SG_CALLEE))["max_duration_s"] == 240
    assert table_snapshot(database) == before  # answering wrote nothing: the expiry job's work stays its own
    assert ok(switch.authorize("c-1", caller.phone, SG_CALLEE))["max_duration_s"] == 240
