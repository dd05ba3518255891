"""Operator CLI for the switch: API keys (created once, revoked), accounts with a caller number and a plan,
caller numbers, plans and call limits of existing accounts."""

from __future__ import annotations

from typing import Any

from credits.accounts import apikeys
from credits.calls import service as calls
from credits.ledger import service as ledger
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    DEFAULT_RATES,
    SG_CALLEE,
    USD,
    Switch,
    call_row,
    callers_fixture,
    plan_fixture,
)


def run(runner: Any, *args: str) -> Any:
    return runner.invoke(args=list(args), catch_exceptions=False)


def last_line(result: Any) -> str:
    lines: list[str] = result.stdout.strip().splitlines()
    return lines[-1]


def test_apikey_create_prints_the_key_alone_on_the_last_line(runner, client, callers):
    caller = callers(credit=10 * USD)
    result = run(runner, "apikey", "create", "--name", "pbx-sg-1", "--scope", "switch")
    assert result.exit_code == 0, result.output
    key = last_line(result)
    assert key.startswith(apikeys.KEY_PREFIX) and " " not in key
    assert key not in result.stdout.strip().splitlines()[0]  # said once, on its own line
    switch = Switch(client, key)
    assert switch.authorize("c-1", caller.phone, SG_CALLEE).get_json()["authorized"]
    [(view, live)] = apikeys.list_keys()
    assert (view.name, view.scope, live) == ("pbx-sg-1", "switch", True)
    listed = run(runner, "apikey", "list")
    assert "pbx-sg-1" in listed.stdout and view.prefix in listed.stdout and key not in listed.stdout


def test_apikey_create_with_an_allowlist(runner, client, callers):
    caller = callers()
    result = run(runner, "apikey", "create", "--name", "pbx-2", "--scope", "switch", "--allowed-ips", "10.0.0.0/8")
    key = last_line(result)
    assert Switch(client, key).balance(caller=caller.phone).status_code == 401
    assert Switch(client, key, {"REMOTE_ADDR": "10.9.8.7"}).balance(caller=caller.phone).status_code == 200


def test_apikey_create_refuses_bad_options_and_writes_nothing(runner, database):
    before = table_snapshot(database)
    for args in (["--name", "x", "--scope", "admin"], ["--name", "", "--scope", "switch"],
                 ["--name", "x", "--allowed-ips", "10.0.0.0/33"], ["--scope", "switch"]):
        result = runner.invoke(args=["apikey", "create", *args])
        assert result.exit_code != 0, args
    assert table_snapshot(database) == before


def test_apikey_revoke_by_name(runner, client, callers):
    caller = callers()
    key = last_line(run(runner, "apikey", "create", "--name", "pbx-old", "--scope", "switch"))
    other = last_line(run(runner, "apikey", "create", "--name", "pbx-new", "--scope", "switch"))
    result = run(runner, "apikey", "revoke", "pbx-old")
    assert result.exit_code == 0 and "revoked 1" in result.stdout
    resp = Switch(client, key).balance(caller=caller.phone)
    assert resp.status_code == 401 and "detail" not in resp.get_json()
    assert Switch(client, other).balance(caller=caller.phone).status_code == 200
    again = runner.invoke(args=["apikey", "revoke", "pbx-old"])
    assert again.exit_code == 1 and "no live key" in again.output


def test_accounts_create_with_phone_and_plan(runner, client, plan):
    from credits.rating import service as rating

    rating.import_plan("gold", [r for r in DEFAULT_RATES if r.prefix != "65"], "USD")
    result = run(runner, "accounts", "create", "--email", "trunk@example.com", "--password", "correct horse battery",
                 "--phone", "+65 6123 0001", "--plan", "gold")
    assert result.exit_code == 0, result.output
    number = last_line(result)
    assert number.isdigit()
    wallet = ledger.get_wallet(number)
    assert calls.caller_numbers(wallet.id) == ["+6561230001"]
    ledger.grant(wallet.id, 10 * USD, "purchase")
    switch = Switch(client, apikeys.create_key("pbx", "switch").secret)
    # The gold plan has no Singapore rate: the account is rated with it, not with "default".
    body = switch.authorize("c-1", "+6561230001", SG_CALLEE).get_json()
    assert body == {"call_id": "c-1", "authorized": False, "max_duration_s": 0, "reason": "no_rate"}
    assert switch.authorize("c-2", "+6561230001", "+12125550100").get_json()["rate"]["prefix"] == "1"


def test_accounts_create_refuses_a_taken_number_and_an_unknown_plan(runner, database, plan):
    run(runner, "accounts", "create", "--email", "a@example.com", "--password", "correct horse battery",
        "--phone", "+6561230001")
    before = table_snapshot(database)
    taken = runner.invoke(args=["accounts", "create", "--email", "b@example.com", "--password",
                                "correct horse battery", "--phone", "+6561230001"])
    assert taken.exit_code == 1 and "registered to another account" in taken.output
    unknown = runner.invoke(args=["accounts", "create", "--email", "c@example.com", "--password",
                                  "correct horse battery", "--plan", "platinum"])
    assert unknown.exit_code == 1 and "no rate plan named platinum" in unknown.output
    bad = runner.invoke(args=["accounts", "create", "--email", "d@example.com", "--password",
                              "correct horse battery", "--phone", "call me"])
    assert bad.exit_code == 1
    assert table_snapshot(database) == before


def test_calls_commands_for_existing_accounts(runner, client, plan):
    from credits.rating import service as rating

    number = last_line(run(runner, "accounts", "create", "--email", "x@example.com", "--password",
                           "correct horse battery"))
    ledger.grant(number, 10 * USD, "purchase")
    assert last_line(run(runner, "calls", "add-number", "--account", "x@example.com", "--phone", "+6561230009")) == (
        "+6561230009")
    rating.import_plan("cheap", [r for r in DEFAULT_RATES if r.prefix != "659"], "USD")
    assert run(runner, "calls", "set-plan", "--account", number, "--plan", "cheap").exit_code == 0
    assert run(runner, "calls", "set-limit", "--account", number, "--max-concurrent-calls", "1").exit_code == 0
    switch = Switch(client, apikeys.create_key("pbx", "switch").secret)
    assert switch.authorize("c-1", "+6561230009", "+6591234567").get_json()["rate"]["prefix"] == "65"
    assert switch.authorize("c-2", "+6561230009", SG_CALLEE).get_json()["reason"] == "too_many_calls"
    assert call_row("c-1").rate_prefix == "65"
    eur = runner.invoke(args=["calls", "set-plan", "--account", number, "--plan", "nope"])
    assert eur.exit_code == 1
