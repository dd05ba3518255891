"""Roles and object-level checks over EVERY route of the app (issue 5, deliverable 5).

The routes come from `app.url_map`, so a route added later is covered without touching this file:
- every customer route (`/api/v1/me...`) answers 401 without credentials;
- every customer route with a path parameter, called by one customer with the ids of another customer's
  rows (any table that points at the victim's user or wallet), answers 404, and leaves the victim untouched;
- every staff route (`/api/v1/staff/...`), with or without ids, answers 401 without credentials and 403 to a
  customer, even one who passed a second factor.
Bodies: `{}` first; when that is refused as malformed (400) a minimal valid body is made from the route's OpenAPI
request schema, so that the answer shows the ownership check, not the schema check. A route whose body
cannot be made that way needs an entry in EXAMPLE_BODIES (the test names it).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.routing import IntegerConverter, PathConverter, UnicodeConverter

from credits.models import metadata
from tests.integration.accounts_helpers import PASSWORD, register
from tests.integration.switch_fixtures import plan_fixture, switch_fixture, switch_key_fixture  # noqa: F401

CUSTOMER_PREFIX = "/api/v1/me"
STAFF_PREFIX = "/api/v1/staff"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
#: (rule, method) -> a body that passes the route's schema, for routes where the generic one does not.
EXAMPLE_BODIES: dict[tuple[str, str], dict[str, Any]] = {}


def _rules(app, prefix):
    out = []
    for rule in app.url_map.iter_rules():
        if rule.rule == prefix or rule.rule.startswith(prefix + "/"):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                out.append((rule, method))
    return out


def _token(client, email, password=PASSWORD):
    r = client.post("/api/v1/auth/token", json={"email": email, "password": password})
    assert r.status_code == 201, r.json
    return {"Authorization": f"Bearer {r.json['token']}"}


# ---------------------------------------------------------------- bodies from the OpenAPI document


def _openapi_path(rule) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def _resolve(spec, schema):
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _example(spec, schema, depth=0):
    schema = _resolve(spec, schema)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: _example(spec, props[name], depth + 1) for name in schema.get("required", []) if depth < 4}
    if kind == "array":
        return [_example(spec, schema.get("items", {}), depth + 1)] if schema.get("minItems") else []
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1
    if kind == "boolean":
        return True
    fmt = schema.get("format")
    if fmt == "date":
        return "2000-01-01"
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt == "email":
        return "someone@example.com"
    length = max(schema.get("minLength", 1), 8)
    return ("1" * length)[: schema.get("maxLength", length)]


def _body(spec, rule, method):
    if (rule.rule, method) in EXAMPLE_BODIES:
        return EXAMPLE_BODIES[(rule.rule, method)]
    operation = spec["paths"].get(_openapi_path(rule), {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if not content:
        return None
    return _example(spec, content["schema"])


def _call(client, spec, rule, method, path, headers):
    send = getattr(client, method.lower())
    if method not in UNSAFE:
        return send(path, headers=headers)
    r = send(path, json={}, headers=headers)
    if r.status_code == 400:
        body = _body(spec, rule, method)
        if body is not None:
            r = send(path, json=body, headers=headers)
    return r


def _url(rule, values: dict[str, Any]) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: str(values[m.group(1)]), rule.rule)


# ---------------------------------------------------------------- whose rows are whose


#: Append-only records no customer route names by id: their ids would only collide with real candidates.
NOT_ADDRESSABLE = ("security_events", "outbox", "audit_log")


def _owned(conn, user_id: int) -> list[tuple[str, dict[str, Any]]]:
    """Every row that points at the user or their wallet (directly), as (table, row mapping)."""
    wallets = set(conn.execute(sa.text("SELECT id FROM wallets WHERE user_id = :u"), {"u": user_id}).scalars())
    rows: list[tuple[str, dict[str, Any]]] = []
    for table in metadata.sorted_tables:
        if table.name in NOT_ADDRESSABLE:
            continue
        cols = table.c
        conditions = []
        if "user_id" in cols:
            conditions.append(cols.user_id == user_id)
        if "wallet_id" in cols and wallets:
            conditions.append(cols.wallet_id.in_(wallets))
        if table.name == "users":
            conditions.append(cols.id == user_id)
        if table.name == "wallets":
            conditions.append(cols.user_id == user_id)
        if conditions:
            rows += [(table.name, dict(r._mapping)) for r in conn.execute(sa.select(table).where(sa.or_(*conditions)))]
    return rows


def _values(rows, kind):
    """Candidate path values in the rows: integer ids for int parameters, id-like strings for string ones."""
    out = set()
    for _table, row in rows:
        for name, value in row.items():
            if kind is int and isinstance(value, int) and not isinstance(value, bool) and (
                    name == "id" or name.endswith("_id")):
                out.add(value)
            if kind is str and isinstance(value, str) and (name == "id" or name.endswith(("_id", "_number")))\
                    and re.fullmatch(r"[\w.@+:-]{1,128}", value):
                out.add(value)
    return out


@pytest.fixture
def people(app, client, switch, plan, clock):
    """An attacker with as little as possible (made first: low ids), then a victim with sessions, a token,
    credit, a finished call and one in progress (a hold), a caller number, and whatever VICTIM_SETUP adds."""
    from credits.ledger import service as ledger

    register(client, "attacker@example.com")
    attacker = _token(client, "attacker@example.com")
    attacker_id = client.get("/api/v1/me", headers=attacker).json["id"]
    register(client, "victim@example.com")
    victim = _token(client, "victim@example.com")
    client.post("/api/v1/auth/login", json={"email": "victim@example.com", "password": PASSWORD})
    client.delete_cookie("__Host-session")
    assert client.patch("/api/v1/me", json={"phone": "+6591230000", "current_password": PASSWORD},
                        headers=victim).status_code == 200
    victim_id = client.get("/api/v1/me", headers=victim).json["id"]
    wallet = ledger.wallet_of_user(victim_id)
    ledger.grant(wallet.id, 5_000_000, "purchase")
    switch.authorize("victim-call-1", "+6591230000", "+6561234567")
    switch.complete("victim-call-1", 61)
    switch.authorize("victim-call-2", "+6591230000", "+6561234567")  # still in progress: a hold
    for setup in VICTIM_SETUP:
        setup(victim_id)
    return victim_id, victim, attacker_id, attacker


#: Functions (victim user id) -> None that give the victim more kinds of rows; features may add theirs.
VICTIM_SETUP: list[Any] = []


def test_every_customer_route_needs_authentication(app, client):
    rules = _rules(app, CUSTOMER_PREFIX)
    assert rules, "no customer routes found"
    for rule, method in rules:
        path = _url(rule, {name: 1 for name in rule.arguments})
        r = getattr(client, method.lower())(path, json={} if method in UNSAFE else None)
        assert r.status_code == 401, (rule.rule, method, r.status_code)
        assert r.mimetype == "application/problem+json" and "detail" not in r.json


def test_every_customer_route_with_another_customers_ids_is_404(app, client, people, database):
    from tests.conftest import table_snapshot

    victim_id, victim, attacker_id, attacker = people
    spec = client.get("/api/v1/openapi.json").json
    assert all(_openapi_path(rule) in spec["paths"] for rule, _m in _rules(app, CUSTOMER_PREFIX))
    with database.engine.connect() as conn:
        victims, attackers = _owned(conn, victim_id), _owned(conn, attacker_id)
    ids_of = {int: _values(victims, int) - _values(attackers, int),
              str: _values(victims, str) - _values(attackers, str)}
    assert ids_of[int] and ids_of[str]
    with database.engine.connect() as conn:
        victim_sessions = set(conn.execute(sa.text("SELECT id FROM sessions WHERE user_id = :u"),
                                           {"u": victim_id}).scalars())
    assert victim_sessions <= ids_of[int]  # the attacker's own rows did not hide the victim's from the walk
    before = {k: v for k, v in table_snapshot(database).items() if k not in ("sessions", "security_events")}
    checked, unverifiable = 0, []
    for rule, method in _rules(app, CUSTOMER_PREFIX):
        if not rule.arguments:
            continue
        for name in rule.arguments:
            converter = rule._converters[name]
            kind = int if isinstance(converter, IntegerConverter) else str
            assert isinstance(converter, (IntegerConverter, UnicodeConverter, PathConverter)), (rule.rule, name)
            for value in sorted(ids_of[kind], key=str):
                values = {n: value if n == name else next(iter(sorted(ids_of[int]))) for n in rule.arguments}
                r = _call(client, spec, rule, method, _url(rule, values), attacker)
                if r.status_code == 400:
                    unverifiable.append((rule.rule, method, r.json))
                    break
                assert r.status_code == 404, (rule.rule, method, value, r.status_code, r.get_json())
                checked += 1
    assert not unverifiable, f"add a valid body to EXAMPLE_BODIES for: {unverifiable}"
    assert checked > 0
    after = {k: v for k, v in table_snapshot(database).items() if k not in ("sessions", "security_events")}
    assert after == before  # nothing of the victim's (or anyone's) changed
    assert client.get("/api/v1/me", headers=victim).status_code == 200


def test_every_staff_route_refuses_customers_with_403_and_strangers_with_401(app, client, people, clock):
    from tests.integration.accounts_helpers import enrol_totp, login, totp_now

    _victim_id, _victim, _attacker_id, attacker = people
    spec = client.get("/api/v1/openapi.json").json
    rules = _rules(app, STAFF_PREFIX)
    assert rules, "no staff routes found"
    # A customer who passed a second factor (cookie session with mfa_ok) is still no staff member.
    r = login(client, "attacker@example.com")
    secret, _codes, csrf = enrol_totp(client, {"X-CSRF-Token": r.json["csrf_token"]})
    clock.advance(seconds=30)
    client.delete_cookie("__Host-session")
    r = login(client, "attacker@example.com", totp=totp_now(secret))
    assert r.status_code == 200 and r.json["mfa_required"] is False
    with_mfa = {"X-CSRF-Token": r.json["csrf_token"]}
    cookie = client.get_cookie("__Host-session").value
    for rule, method in rules:
        path = _url(rule, {name: 1 for name in rule.arguments})
        client.delete_cookie("__Host-session")
        stranger = _call(client, spec, rule, method, path, {})
        assert stranger.status_code == 401, (rule.rule, method, stranger.status_code)
        customer = _call(client, spec, rule, method, path, attacker)
        assert customer.status_code == 403, (rule.rule, method, customer.status_code)
        client.set_cookie("__Host-session", cookie)
        customer_mfa = _call(client, spec, rule, method, path, with_mfa)
        assert customer_mfa.status_code == 403, (rule.rule, method, customer_mfa.status_code)
    assert csrf
