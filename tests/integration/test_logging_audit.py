"""Logs and audit (CHECKLIST O100-O103): the logs of real flows hold no secrets or personal data, security events
as rows with time, subject, action and request id, log injection escaped, the audit log append-only and
hash-chained."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa

from credits import audit
from credits import logging as logs
from credits.accounts import apikeys
from credits.accounts import service as accounts
from credits.db import unit_of_work
from credits.ledger import service as ledger
from credits.notify import delivery
from credits.rating import service as rating
from credits.rating.engine import Rate
from tests.integration.accounts_helpers import (
    PASSWORD,
    cookie,
    enrol_totp,
    login,
    outbox,
    register,
    totp_now,
    verify_latest,
)
from tests.integration.payments_fixtures import VISA, bearer, fake, fake_card, staff  # noqa: F401 - fixture
from tests.integration.smtp_server import SmtpSink

NEW_PASSWORD = "quartz lantern meadow 77"
EMAIL = "ada.lovelace@example.com"
PHONE = "+6591234567"
CALLEE = "+6561234567"
USD = 1_000_000


@pytest.fixture
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def settings_overrides(smtp):
    return {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "public_url": "https://credits.example.net"}


@pytest.fixture
def log_lines(app):
    """Everything the app's JSON handler writes during the test, at DEBUG: a function returning the lines."""
    handler = logs.handler()
    assert handler is not None, "create_app installs the JSON log handler"
    buffer = io.StringIO()
    previous_stream = handler.setStream(buffer)  # type: ignore[attr-defined]
    root = logs.logging.getLogger()
    previous_level = root.level
    root.setLevel("DEBUG")
    yield lambda: buffer.getvalue().splitlines()
    root.setLevel(previous_level)
    handler.setStream(previous_stream)  # type: ignore[attr-defined]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _pii_found(text: str) -> list[str]:
    """Personal data a generic scan finds: email addresses, phone numbers (regex + PhoneNumberMatcher), PANs."""
    # A domain ends in letters: SIP call ids such as "x@10.0.0.1" are not addresses.
    found = re.findall(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b", text)
    for region in ("SG", "US", "GB"):
        found += [m.raw_string for m in phonenumbers.PhoneNumberMatcher(text, region)]
    found += [m for m in re.findall(r"(?<!\d)\d{13,19}(?!\d)", text) if _luhn(m)]
    return found


# ---------------------------------------------------------------- O100


def test_O100_logs_of_signup_login_reset_purchase_and_switch_calls_hold_no_secrets(
        client, make, database, smtp, fake, log_lines, clock):  # noqa: F811 - the fake gateway fixture
    secrets: dict[str, str] = {"password": PASSWORD, "new password": NEW_PASSWORD, "email": EMAIL,
                               "phone": PHONE, "callee": CALLEE, "card": VISA}
    rid = iter(f"req-o100-{i:04d}" for i in range(1000))

    def h(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-Request-Id": next(rid), "User-Agent": "pytest-o100", **(extra or {})}

    # Sign-up and email verification.
    assert register(client, EMAIL, PASSWORD).status_code == 201
    [(_, _, verify)] = outbox("verify_email")
    secrets["verify token"] = verify["token"]
    assert verify_latest(client).status_code == 200
    # Sign-in: wrong password, right password (cookie + CSRF), TOTP on, sign-in with TOTP, a personal token.
    assert client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD + "x"},
                       headers=h()).status_code == 401
    r = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers=h())
    assert r.status_code == 200, r.json
    secrets["session cookie"], secrets["csrf"] = cookie(client), r.json["csrf_token"]
    totp_secret, recovery, csrf = enrol_totp(client, {"X-CSRF-Token": r.json["csrf_token"]})
    secrets["totp secret"], secrets["recovery code"] = totp_secret, recovery[0]
    code = totp_now(totp_secret, 1)
    secrets["totp code"] = code
    r = client.post("/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD, "totp": code}, headers=h())
    assert r.status_code == 201, r.json
    secrets["personal token"] = r.json["token"]
    assert client.get("/api/v1/me", headers=h({"Authorization": f"Bearer {r.json['token']}"})).status_code == 200
    # Password reset: request, confirm with the emailed token.
    assert client.post("/api/v1/auth/password-reset", json={"email": EMAIL}, headers=h()).status_code == 202
    secrets["reset token"] = outbox("password_reset")[-1][2]["token"]
    r = client.post("/api/v1/auth/password-reset/confirm", headers=h(),
                    json={"token": secrets["reset token"], "password": NEW_PASSWORD})
    assert r.status_code == 200, r.json
    # Purchase with a card (fake gateway), and a request that wrongly carries a card number.
    user_id = accounts.normalise_email(EMAIL) and _user_id(database)
    auth = bearer(user_id)
    secrets["purchase token"] = auth["Authorization"].removeprefix("Bearer ")
    pm = fake_card(fake, user_id)
    r = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": pm}, headers=h(auth))
    assert r.status_code in (200, 201), r.json
    purchase = r.json
    r = client.post("/api/v1/me/purchases", json={"amount": "10.00", "payment_method": VISA}, headers=h(auth))
    assert r.status_code == 400
    # The gateway's webhook (signed), a forged one, and a staff refund of part of the purchase.
    if purchase.get("client_secret"):
        secrets["client secret"] = purchase["client_secret"]
    intent = _intent_of(database, purchase["id"])
    hook = fake.event_for_payment_intent(intent, "payment_intent.succeeded")
    assert client.post("/webhooks/stripe", data=hook.payload, headers={**hook.headers, **h()}).status_code == 200
    forged = fake.signed(hook.event, secret="whsec_attacker_secret")  # noqa: S106 - a test value
    assert client.post("/webhooks/stripe", data=forged.payload, headers={**forged.headers, **h()}).status_code == 400
    _staff_id, staff_auth = staff(make)
    r = client.post("/api/v1/staff/refunds", headers=h(staff_auth),
                    json={"purchase_id": purchase["id"], "amount": "2.00", "reason": "customer asked by phone"})
    assert r.status_code in (200, 201, 202), r.json
    # Password change, signed in with the new password and the second factor (a later TOTP step).
    clock.advance(seconds=90)
    r = client.post("/api/v1/auth/login", headers=h(),
                    json={"email": EMAIL, "password": NEW_PASSWORD, "totp": totp_now(totp_secret)})
    assert r.status_code == 200, r.json
    r = client.post("/api/v1/me/password", headers=h({"X-CSRF-Token": r.json["csrf_token"]}),
                    json={"current_password": NEW_PASSWORD, "new_password": PASSWORD + " again"})
    assert r.status_code in (200, 204), r.json
    secrets["third password"] = PASSWORD + " again"
    # Switch calls: authorize, complete, balance and quote by caller number.
    rating.import_plan("default", [Rate("65", "Singapore", 12_300, 0, 60, 6)], "USD")
    key = apikeys.create_key("switch-1", "switch")
    secrets["switch key"] = key.secret
    caller = accounts.create_account("caller@example.com", "caller password 123", phone=PHONE)
    ledger.grant(caller.wallet.id, 5 * USD, "purchase")
    switch = {"Authorization": f"Bearer {key.secret}"}
    r = client.post("/api/v1/calls/authorize", headers=h(switch),
                    json={"call_id": "call-o100@10.0.0.1", "caller": PHONE, "callee": CALLEE})
    assert r.status_code == 200 and r.json["authorized"], r.json
    r = client.post("/api/v1/calls/call-o100@10.0.0.1/complete", headers=h(switch),
                    json={"duration_s": 125, "disposition": "answered"})
    assert r.status_code == 200, r.json
    assert client.get(f"/api/v1/balance?caller={PHONE}", headers=h(switch)).status_code == 200
    assert client.get(f"/api/v1/quote?caller={PHONE}&callee={CALLEE}", headers=h(switch)).status_code == 200
    assert client.post("/api/v1/calls/authorize", headers=h({"Authorization": "Bearer csk_wrong_key_123456"}),
                       json={"call_id": "c2", "caller": PHONE, "callee": CALLEE}).status_code == 401
    # Every queued email goes out over SMTP (each security notice with its "this wasn't me" link).
    for _, _, context in outbox():
        if "wasnt_me_url" in context:
            secrets.setdefault("wasnt-me token", context["wasnt_me_url"].rpartition("token=")[2])
    result = delivery.deliver_due()
    assert result.dead == 0 and result.retried == 0 and result.sent >= 5, result
    smtp.wait_for(result.sent)

    lines = log_lines()
    text = "\n".join(lines)
    assert len(lines) > 20 and all(json.loads(line) for line in lines)
    requests = [json.loads(line) for line in lines if '"logger": "credits.request"' in line]
    assert {r["request_id"] for r in requests} >= {"req-o100-0000", "req-o100-0003"}
    assert any("outbox message" in line for line in lines)
    leaked = {name: value for name, value in secrets.items() if value and value in text}
    assert leaked == {}, f"secrets in the logs: {sorted(leaked)}"
    assert _pii_found(text) == []


def _intent_of(database: Any, purchase_id: Any) -> str:
    with database.engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT payment_intent_id FROM purchases WHERE id = :id"),
                                {"id": purchase_id}).scalar_one())


def _user_id(database: Any) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT min(id) FROM users")).scalar_one())


# ---------------------------------------------------------------- O101


def _events(database: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM security_events ORDER BY id")).all()


def test_O101_security_events_carry_time_subject_action_and_request_id(client, database, clock):
    register(client, EMAIL, PASSWORD)
    verify_latest(client)
    user_id = _user_id(database)
    steps = [
        ("login_failed", lambda: client.post("/api/v1/auth/login", json={"email": EMAIL, "password": "nope nope 1"},
                                             headers={"X-Request-Id": "req-o101-fail"})),
        ("login", lambda: client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD},
                                      headers={"X-Request-Id": "req-o101-login"})),
    ]
    for _kind, call in steps:
        response = call()
        assert response.headers["X-Request-Id"].startswith("req-o101-")
    assert client.post("/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD}).status_code == 201
    csrf = {"X-CSRF-Token": login(client, EMAIL, PASSWORD).json["csrf_token"]}
    r = client.delete("/api/v1/me/sessions", headers={**csrf, "X-Request-Id": "req-o101-revoke"})
    assert r.status_code == 200 and r.json["revoked"] >= 1
    r = client.post("/api/v1/me/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                    headers={**csrf, "X-Request-Id": "req-o101-change"})
    assert r.status_code in (200, 204), r.json
    r = client.post("/api/v1/auth/password-reset", json={"email": EMAIL}, headers={"X-Request-Id": "req-o101-reset"})
    assert r.status_code == 202
    token = outbox("password_reset")[-1][2]["token"]
    r = client.post("/api/v1/auth/password-reset/confirm", json={"token": token, "password": PASSWORD},
                    headers={"X-Request-Id": "req-o101-confirm"})
    assert r.status_code == 200, r.json
    csrf = {"X-CSRF-Token": login(client, EMAIL, PASSWORD).json["csrf_token"]}
    r = client.post("/api/v1/me/security/compromised", json={}, headers={**csrf, "X-Request-Id": "req-o101-report"})
    assert r.status_code == 201

    by_request = {}
    for event in _events(database):
        match = re.search(r"request=(req-o101-[a-z]+)", event.detail)
        if match:
            by_request.setdefault(match.group(1), []).append(event)
    expected = {"req-o101-fail": "login_failed", "req-o101-login": "login", "req-o101-revoke": "sessions_revoked",
                "req-o101-change": "password_changed",
                "req-o101-reset": "password_reset_requested", "req-o101-confirm": "password_reset",
                "req-o101-report": "compromise_reported"}
    for request_id, kind in expected.items():
        events = by_request.get(request_id, [])
        assert kind in [e.kind for e in events], (request_id, [e.kind for e in events])
        event = next(e for e in events if e.kind == kind)
        assert event.user_id == user_id  # the subject
        assert event.at is not None and event.ip_prefix == "127.0.0.0/24"
    # Session revocation by the report: its event names how many sessions ended.
    report = by_request["req-o101-report"][0]
    assert "outcome=ok" in report.detail and "sessions_revoked=" in report.detail
    # Times are UTC (the frozen clock's instant), as the audit trail needs.
    with database.engine.connect() as conn:
        at = conn.execute(sa.select(sa.text("at")).select_from(sa.text("security_events")).limit(1)).scalar_one()
    assert str(at).startswith(clock.now().strftime("%Y-%m-%d"))


def test_O101_mfa_failure_is_an_event_with_its_request_id(client, database):
    register(client, EMAIL, PASSWORD)
    verify_latest(client)
    r = login(client, EMAIL, PASSWORD)
    _secret, _codes, _csrf = enrol_totp(client, {"X-CSRF-Token": r.json["csrf_token"]})
    r = login(client, EMAIL, PASSWORD)
    assert r.status_code == 200 and r.json["mfa_required"] is True
    r = client.post("/api/v1/auth/mfa", json={"code": "000000"},
                    headers={"X-CSRF-Token": r.json["csrf_token"], "X-Request-Id": "req-o101-mfa"})
    assert r.status_code == 401
    [event] = [e for e in _events(database) if e.kind == "mfa_failed"]
    assert event.user_id == _user_id(database) and "request=req-o101-mfa" in event.detail


# ---------------------------------------------------------------- O102


def test_O102_forged_log_lines_from_a_request_are_escaped(client, log_lines):
    client.get("/api/v1/nothing%0d%0a%7B%22level%22%3A%22INFO%22%7D%1b[2J", headers={"X-Request-Id": "req-o102-0001"})
    lines = [line for line in log_lines() if "req-o102-0001" in line]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert "\\r\\n" in record["message"] and "\\x1b" in record["message"]
    assert "\r" not in record["path"] and "\n" not in record["path"]


# ---------------------------------------------------------------- O103


def _some_audit(make: Any) -> None:
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        for i in range(3):
            audit.record(uow.session, "user:1", "test.action", f"user:{alice.user_id}", n=i)
        uow.commit()


@pytest.mark.postgres
def test_O103_audit_rows_cannot_be_updated_or_deleted_on_postgresql(make, database):
    _some_audit(make)
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with database.engine.connect() as conn:
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                conn.execute(sa.text(statement))
            conn.rollback()
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one() == 3
    assert audit.verify().ok


def test_O103_audit_verify_detects_a_tampered_chain(make, database, runner):
    _some_audit(make)
    ok = runner.invoke(args=["audit", "verify"])
    assert ok.exit_code == 0 and "3 entries, chain intact" in ok.output
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":  # what only a superuser could do: switch the trigger off
            conn.execute(sa.text("SET session_replication_role = replica"))
        second = conn.execute(sa.text("SELECT id FROM audit_log ORDER BY id LIMIT 1 OFFSET 1")).scalar_one()
        conn.execute(sa.text("UPDATE audit_log SET detail = '{\"n\": 99}' WHERE id = :id"), {"id": second})
        conn.commit()
    broken = runner.invoke(args=["audit", "verify"])
    assert broken.exit_code == 1
    assert f"chain broken at entry {second}: entry was altered" in broken.output


def test_O103_audit_verify_detects_a_deleted_entry(make, database, runner):
    _some_audit(make)
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":
            conn.execute(sa.text("SET session_replication_role = replica"))
        first, second = conn.execute(sa.text("SELECT id FROM audit_log ORDER BY id LIMIT 2")).scalars().all()
        conn.execute(sa.text("DELETE FROM audit_log WHERE id = :id"), {"id": first})
        conn.commit()
    broken = runner.invoke(args=["audit", "verify"])
    assert broken.exit_code == 1
    assert f"chain broken at entry {second}: link to the previous entry does not match" in broken.output
