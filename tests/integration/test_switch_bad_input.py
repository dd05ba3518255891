"""Malformed switch requests and bad keys: 400/401/404/409 problem+json, and nothing written, not one row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from credits.accounts import apikeys
from credits.accounts.models import ApiKey
from credits.db import get as get_db
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    SG_CALLEE,
    USD,
    Switch,
    callers_fixture,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
)

PROBLEM = "application/problem+json"


@contextmanager
def writes_nothing(database: Any) -> Iterator[None]:
    before = table_snapshot(database)
    yield
    assert table_snapshot(database) == before


def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"] == PROBLEM
    body: dict[str, Any] = resp.get_json()
    assert body["status"] == status and body["title"]
    return body


@pytest.fixture
def call_in_progress(switch, callers) -> Any:
    """A caller with one authorised call, "c-1", and a switch key never used since (last_used_at stale)."""
    caller = callers(credit=10 * USD)
    assert switch.authorize("c-1", caller.phone, SG_CALLEE).get_json()["authorized"]
    return caller


def stale_key(clock: Any) -> None:
    # Two minutes later the key's last use is due to be written again: a bad request must not write it.
    clock.advance(seconds=120)


# ---------------------------------------------------------------- authorize


AUTHORIZE = {"call_id": "c-2", "caller": "+6561000001", "callee": SG_CALLEE}
BAD_AUTHORIZE = {
    "missing call_id": {k: v for k, v in AUTHORIZE.items() if k != "call_id"},
    "missing callee": {k: v for k, v in AUTHORIZE.items() if k != "callee"},
    "missing caller and account": {k: v for k, v in AUTHORIZE.items() if k != "caller"},
    "empty call_id": {**AUTHORIZE, "call_id": ""},
    "call_id 129 characters": {**AUTHORIZE, "call_id": "x" * 129},
    "call_id control character": {**AUTHORIZE, "call_id": "c-2\n"},
    "call_id not a string": {**AUTHORIZE, "call_id": 12},
    "callee with letters": {**AUTHORIZE, "callee": "+65CALLME"},
    "callee with spaces": {**AUTHORIZE, "callee": "+65 6123 4567"},
    "callee 21 digits": {**AUTHORIZE, "callee": "+" + "6" * 21},
    "callee empty": {**AUTHORIZE, "callee": ""},
    "callee a number": {**AUTHORIZE, "callee": 6561234567},
    "caller with letters": {**AUTHORIZE, "caller": "anonymous"},
    "caller null": {**AUTHORIZE, "caller": None},
    "account not digits": {**AUTHORIZE, "account": "ACC-1"},
    "unknown field": {**AUTHORIZE, "max_duration_s": 60},
}


@pytest.mark.parametrize("body", BAD_AUTHORIZE.values(), ids=BAD_AUTHORIZE.keys())
def test_authorize_malformed_is_400(switch, call_in_progress, database, clock, body):
    stale_key(clock)
    with writes_nothing(database):
        answer = problem(switch.post("/calls/authorize", body), 400)
    assert answer["code"] == "invalid_input"


def test_call_id_of_128_printable_characters_is_accepted(switch, call_in_progress):
    call_id = "".join(chr(32 + i % 95) for i in range(128))
    resp = switch.authorize(call_id, call_in_progress.phone, SG_CALLEE)
    assert resp.status_code == 200 and resp.get_json()["call_id"] == call_id


# ---------------------------------------------------------------- complete and update

COMPLETE = {"duration_s": 125, "disposition": "answered"}
BAD_COMPLETE = {
    "missing duration": {"disposition": "answered"},
    "missing disposition": {"duration_s": 125},
    "float duration": {**COMPLETE, "duration_s": 1.5},
    "whole float duration": {**COMPLETE, "duration_s": 125.0},
    "string duration": {**COMPLETE, "duration_s": "10"},
    "bool duration": {**COMPLETE, "duration_s": True},
    "null duration": {**COMPLETE, "duration_s": None},
    "negative duration": {**COMPLETE, "duration_s": -1},
    "duration over 24 h": {**COMPLETE, "duration_s": 86401},
    "huge duration": {**COMPLETE, "duration_s": 10**30},
    "unknown disposition": {**COMPLETE, "disposition": "hung_up"},
    "unknown field": {**COMPLETE, "cost": "0.01"},
    "answered_at not a time": {**COMPLETE, "answered_at": "yesterday"},
    "answered_at without timezone": {**COMPLETE, "answered_at": "2026-11-22T10:00:00"},
    "end_reason too long": {**COMPLETE, "end_reason": "x" * 33},
    # Found by the API fuzz test (500s): times with no UTC equivalent, or too near the ends of the calendar
    # for the call's duration (the answer or end time computed from them overflowed).
    "answered_at after year 9999 in UTC": {**COMPLETE, "answered_at": "9999-12-31T23:59:59-14:00"},
    "ended_at before year 1 in UTC": {**COMPLETE, "ended_at": "0001-01-01T00:00:00+14:00"},
    "ended_at too early for the duration": {**COMPLETE, "ended_at": "0001-01-01T00:00:00Z"},
    "answered_at too late for the duration": {**COMPLETE, "answered_at": "9999-12-31T23:59:59Z"},
}


@pytest.mark.parametrize("body", BAD_COMPLETE.values(), ids=BAD_COMPLETE.keys())
def test_complete_malformed_is_400(switch, call_in_progress, database, clock, body):
    stale_key(clock)
    with writes_nothing(database):
        problem(switch.post("/calls/c-1/complete", body), 400)


BAD_UPDATE = {
    "missing elapsed": {},
    "float elapsed": {"elapsed_s": 1.5},
    "string elapsed": {"elapsed_s": "10"},
    "bool elapsed": {"elapsed_s": False},
    "negative elapsed": {"elapsed_s": -5},
    "elapsed over 24 h": {"elapsed_s": 86401},
    "unknown field": {"elapsed_s": 10, "extra": 1},
}


@pytest.mark.parametrize("body", BAD_UPDATE.values(), ids=BAD_UPDATE.keys())
def test_update_malformed_is_400(switch, call_in_progress, database, clock, body):
    stale_key(clock)
    with writes_nothing(database):
        problem(switch.post("/calls/c-1/update", body), 400)


def test_durations_at_the_limits_are_accepted(switch, call_in_progress):
    assert switch.update("c-1", 86400).status_code == 200
    assert switch.complete("c-1", 0).get_json()["charged"] == "0.000000"


@pytest.mark.parametrize("action", ["complete", "update"])
def test_unknown_call_is_404(switch, call_in_progress, database, clock, action):
    stale_key(clock)
    body = COMPLETE if action == "complete" else {"elapsed_s": 10}
    with writes_nothing(database):
        answer = problem(switch.post(f"/calls/no-such-call/{action}", body), 404)
    assert answer["code"] == "not_found"


@pytest.mark.parametrize("action", ["complete", "update"])
def test_call_id_over_128_characters_in_the_path_is_400(switch, call_in_progress, database, clock, action):
    stale_key(clock)
    body = COMPLETE if action == "complete" else {"elapsed_s": 10}
    with writes_nothing(database):
        problem(switch.post(f"/calls/{'x' * 129}/{action}", body), 400)


def test_complete_replay_with_another_duration_is_409(switch, call_in_progress, database, clock):
    assert switch.complete("c-1", 125).status_code == 200
    stale_key(clock)
    with writes_nothing(database):
        answer = problem(switch.complete("c-1", 126), 409)
        problem(switch.complete("c-1", 125, "busy"), 409)
    assert answer["code"] == "conflict"


def test_authorize_replay_for_another_account_is_409(switch, call_in_progress, callers, database, clock):
    other = callers()
    stale_key(clock)
    with writes_nothing(database):
        problem(switch.authorize("c-1", other.phone, SG_CALLEE), 409)


# ---------------------------------------------------------------- bodies that are not JSON


@pytest.mark.parametrize(("data", "content_type"), [
    ("{not json", "application/json"),
    ('{"duration_s": 125, "disposition": "answered"', "application/json"),
    ("", "application/json"),
    ("[125]", "application/json"),
    ('"answered"', "application/json"),
    ("duration_s=125&disposition=answered", "application/x-www-form-urlencoded"),
    (json.dumps(COMPLETE), "text/plain"),
    (json.dumps(COMPLETE), None),
], ids=["broken", "truncated", "empty", "array", "string", "form", "json-as-text-plain", "no-content-type"])
def test_complete_body_not_json_is_400(switch, call_in_progress, database, clock, data, content_type):
    stale_key(clock)
    with writes_nothing(database):
        resp = switch.client.post("/api/v1/calls/c-1/complete", data=data, content_type=content_type,
                                  headers=switch.headers())
        problem(resp, 400)


def test_authorize_json_sent_as_text_plain_is_400(switch, call_in_progress, database, clock):
    stale_key(clock)
    body = json.dumps({**AUTHORIZE, "caller": call_in_progress.phone})
    with writes_nothing(database):
        problem(switch.client.post("/api/v1/calls/authorize", data=body, content_type="text/plain",
                                   headers=switch.headers()), 400)


# ---------------------------------------------------------------- batch CDRs and queries


def cdr(i: int, caller: str) -> dict[str, Any]:
    return {"call_id": f"cdr-{i}", "caller": caller, "callee": SG_CALLEE, "duration_s": 60,
            "answered_at": "2026-11-22T11:00:00Z", "disposition": "answered"}


@pytest.mark.parametrize("body", [
    {},
    {"cdrs": []},
    {"cdrs": "cdr-1"},
    {"cdrs": [], "extra": 1},
], ids=["missing", "empty", "not-a-list", "unknown-field"])
def test_cdrs_malformed_batch_is_400(switch, call_in_progress, database, clock, body):
    stale_key(clock)
    with writes_nothing(database):
        problem(switch.post("/cdrs", body), 400)


OUT_OF_RANGE_TIMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z",
                      "0001-01-01T00:00:00Z"]


def test_cdrs_with_times_out_of_range_are_rejected_alone(switch, call_in_progress, database):
    # Found by the API fuzz test: one such item failed the whole batch with a 500.
    bad = [{**cdr(i, call_in_progress.phone), "answered_at": t} for i, t in enumerate(OUT_OF_RANGE_TIMES)]
    with writes_nothing(database):
        resp = switch.cdrs(bad)
    assert resp.status_code == 200, resp.get_json()
    assert [(r["status"], r["error"]) for r in resp.get_json()["results"]] == [
        ("rejected", "answered_at is out of range")] * len(bad)
    good = cdr(9, call_in_progress.phone)
    results = switch.cdrs([bad[0], good]).get_json()["results"]
    assert [r["status"] for r in results] == ["rejected", "charged"]


def test_more_than_1000_cdrs_is_400_and_nothing_is_charged(switch, call_in_progress, database, clock):
    stale_key(clock)
    with writes_nothing(database):
        problem(switch.cdrs([cdr(i, call_in_progress.phone) for i in range(1001)]), 400)


@pytest.mark.parametrize(("path", "query"), [
    ("/balance", {}),
    ("/balance", {"caller": "+65CALL"}),
    ("/balance", {"account": "ACC"}),
    ("/balance", {"caller": "+6561000001", "extra": "1"}),
    ("/quote", {"caller": "+6561000001"}),
    ("/quote", {"caller": "+6561000001", "callee": "lettersonly"}),
    ("/quote", {"callee": SG_CALLEE}),
], ids=["balance-nothing", "balance-letters", "balance-account", "balance-unknown", "quote-no-callee",
        "quote-letters", "quote-nobody"])
def test_queries_malformed_are_400(switch, call_in_progress, database, clock, path, query):
    stale_key(clock)
    with writes_nothing(database):
        problem(switch.get(path, query_string=query), 400)


# ---------------------------------------------------------------- keys


def _requests(switch: Switch, caller: str) -> list[Any]:
    return [
        lambda key: switch.post("/calls/authorize", {**AUTHORIZE, "caller": caller}, headers=key),
        lambda key: switch.post("/calls/c-1/update", {"elapsed_s": 10}, headers=key),
        lambda key: switch.post("/calls/c-1/complete", COMPLETE, headers=key),
        lambda key: switch.post("/cdrs", {"cdrs": [cdr(1, caller)]}, headers=key),
        lambda key: switch.get("/balance", query_string={"caller": caller}, headers=key),
        lambda key: switch.get("/quote", query_string={"caller": caller, "callee": SG_CALLEE}, headers=key),
    ]


def test_missing_unknown_malformed_or_revoked_key_is_401_without_detail(switch, call_in_progress, database):
    revoked = apikeys.create_key("old-switch", "switch")
    apikeys.revoke_key("old-switch")
    good = switch.key
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")  # right prefix, wrong secret
    bad_headers = [
        {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
        {"Authorization": f"Basic {good}"}, {"Authorization": good}, {"Authorization": "Bearer csk_nope"},
        {"Authorization": f"Bearer {forged}"}, {"Authorization": f"Bearer {revoked.secret}"},
        {"Authorization": f"Bearer {good}x"}, {"Authorization": f"Bearer {'csk_' + 'a' * 200}"},
    ]
    with writes_nothing(database):
        for send in _requests(switch, call_in_progress.phone):
            for headers in bad_headers:
                body = problem(send(headers), 401)
                assert "detail" not in body, (headers, body)
                assert body["code"] == "unauthorized"


def test_revoked_key_stops_working_at_once(switch, call_in_progress, switch_key):
    assert switch.balance(caller=call_in_progress.phone).status_code == 200
    assert apikeys.revoke_key(switch_key.view.prefix) == 1
    resp = switch.balance(caller=call_in_progress.phone)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"


def test_source_ip_allowlist(client, callers, database):
    caller = callers(credit=USD)
    key = apikeys.create_key("pbx-1", "switch", allowed_ips="10.0.0.0/8, 192.0.2.7")
    assert key.view.allowed_ips == "10.0.0.0/8,192.0.2.7/32"
    from_loopback = Switch(client, key.secret)  # the test client comes from 127.0.0.1
    with writes_nothing(database):
        for send in _requests(from_loopback, caller.phone):
            assert "detail" not in problem(send(from_loopback.headers()), 401)
    for addr in ("10.1.2.3", "192.0.2.7"):
        allowed = Switch(client, key.secret, {"REMOTE_ADDR": addr})
        assert allowed.balance(caller=caller.phone).status_code == 200, addr
    for addr in ("192.0.2.8", "11.0.0.1", "::1"):
        refused = Switch(client, key.secret, {"REMOTE_ADDR": addr})
        assert refused.balance(caller=caller.phone).status_code == 401, addr


def test_bad_allowlist_is_refused_at_creation(app, database):
    from credits.errors import ValidationError

    with writes_nothing(database), pytest.raises(ValidationError):
        apikeys.create_key("pbx-2", "switch", allowed_ips="10.0.0.0/8,not-an-ip")


def _last_used(key_id: int) -> Any:
    import sqlalchemy as sa

    with get_db().engine.connect() as conn:
        return conn.execute(sa.select(ApiKey.last_used_at).where(ApiKey.id == key_id)).scalar_one()


def test_last_used_time_is_recorded_at_most_once_a_minute(switch, switch_key, callers, clock):
    caller = callers()
    assert _last_used(switch_key.view.id) is None
    assert switch.balance(caller=caller.phone).status_code == 200
    first = clock.now()
    assert _last_used(switch_key.view.id) == first
    clock.advance(seconds=30)
    switch.balance(caller=caller.phone)
    assert _last_used(switch_key.view.id) == first
    clock.advance(seconds=31)
    switch.balance(caller=caller.phone)
    assert _last_used(switch_key.view.id) == first + timedelta(seconds=61)
    # A refusal is still an answer (HTTP 200): the key was used.
    clock.advance(seconds=60)
    assert switch.authorize("c-9", "+6599999999", SG_CALLEE).get_json()["reason"] == "unknown_caller"
    assert _last_used(switch_key.view.id) == clock.now()


def test_key_is_stored_hashed_never_in_clear(switch, switch_key, call_in_progress, database):
    secret = switch_key.secret
    assert secret.startswith(switch_key.view.prefix + "_") and len(secret) > 40
    for table, rows in table_snapshot(database).items():
        for row in rows:
            for value in row:
                assert not (isinstance(value, str) and secret[len(switch_key.view.prefix):] in value), table
    [row] = _key_rows()
    assert row.prefix == switch_key.view.prefix and len(row.key_hash) == 64 and secret not in row.key_hash


def _key_rows() -> list[Any]:
    import sqlalchemy as sa

    with get_db().engine.connect() as conn:
        return list(conn.execute(sa.select(ApiKey.prefix, ApiKey.key_hash)).all())


def test_a_key_prefix_collision_draws_another_key(app, monkeypatch):
    import secrets

    first = apikeys.create_key("pbx-1", "switch")
    hexes = iter([first.view.prefix.removeprefix(apikeys.KEY_PREFIX), "0badcafe"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(hexes))
    second = apikeys.create_key("pbx-2", "switch")
    assert second.view.prefix == apikeys.KEY_PREFIX + "0badcafe"
    assert apikeys.authenticate(second.secret, "switch", "127.0.0.1").name == "pbx-2"
    assert apikeys.authenticate(first.secret, "switch", "127.0.0.1").name == "pbx-1"
