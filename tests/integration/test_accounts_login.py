"""Sign-in (CHECKLIST J65-J67, K76, K77): login, personal tokens, logout, throttling per account and per IP."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from credits.accounts.models import Session
from credits.security.models import SecurityEvent
from credits.web.auth import SESSION_COOKIE
from tests.integration.accounts_helpers import PASSWORD, cookie, login, outbox, register, signed_in


def _problem_shape(r):
    body = dict(r.json)
    body.pop("request_id")
    return r.status_code, r.mimetype, body


def test_login_sets_a_host_session_cookie(client):
    register(client)
    r = login(client)
    assert r.status_code == 200 and r.json["mfa_required"] is False and r.json["csrf_token"]
    set_cookie = r.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in set_cookie
    assert "Domain" not in set_cookie
    assert client.get("/api/v1/me").json["email"] == "ada@example.com"


def test_J65_unknown_user_and_wrong_password_get_the_same_answer_and_timing(client, monkeypatch):
    register(client)
    unknown = login(client, "nobody@example.com", PASSWORD)
    wrong = login(client, "ada@example.com", PASSWORD + "!")
    assert _problem_shape(unknown) == _problem_shape(wrong)
    assert unknown.status_code == 401 and unknown.json["code"] == "invalid_credentials"
    assert unknown.headers.get("Set-Cookie") is None and wrong.headers.get("Set-Cookie") is None

    # Same work on both paths, shown without a clock (timed assertions flake on shared machines): each
    # attempt verifies exactly one argon2 hash, with the same parameters, whether or not the user exists.
    from argon2 import PasswordHasher

    verified: list[str] = []
    real_verify = PasswordHasher.verify

    def counting_verify(self, hash, password):  # noqa: A002 - argon2's own parameter name
        verified.append(hash.rsplit("$", 2)[0])  # "$argon2id$v=19$m=...,t=...,p=..."
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    login(client, "nobody-else@example.com", PASSWORD)
    unknown_work = list(verified)
    verified.clear()
    login(client, "ada@example.com", PASSWORD + "?")
    known_work = list(verified)
    assert len(unknown_work) == 1 and unknown_work == known_work, (unknown_work, known_work)
    assert unknown_work[0].startswith("$argon2id$")


def test_J65_closed_account_answers_like_a_wrong_password(client):
    from credits.accounts import service

    csrf = signed_in(client)
    user_id = client.get("/api/v1/me").json["id"]
    client.post("/api/v1/auth/logout", headers=csrf)
    service.set_status(user_id, "closed")
    r = login(client)
    assert r.status_code == 401 and r.json["code"] == "invalid_credentials"


def test_J66_per_account_throttle_grows_then_lets_the_right_password_in(client, monkeypatch):
    register(client)
    register(client, "other@example.com")
    now = [time.time()]
    monkeypatch.setattr(time, "time", lambda: now[0])
    for _ in range(5):
        assert login(client, password="wrong password").status_code == 401
    blocked = login(client)  # even the right password waits: the count is per account
    assert blocked.status_code == 429 and blocked.mimetype == "application/problem+json"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert login(client, "other@example.com").status_code == 200  # other accounts unaffected
    now[0] += 61
    for _ in range(5):
        assert login(client, password="wrong password").status_code == 401
    second = login(client)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 60  # the wait grows
    now[0] += 15 * 60 + 1
    assert login(client).status_code == 200  # no permanent lock-out
    # Success clears the count: 4 failures, a success, 4 more failures all within a minute, no wait.
    for _ in range(4):
        assert login(client, password="wrong password").status_code == 401
    assert login(client).status_code == 200
    for _ in range(4):
        assert login(client, password="wrong password").status_code == 401
    assert login(client).status_code == 200


def test_J66_documented_limits_stay_within_the_checklist():
    from limits import parse_many

    from credits.config import Config

    tiers = {(item.get_expiry(), item.amount) for item in parse_many(Config().login_account_limit)}
    assert min(tiers)[1] <= 10  # throttled after at most 10 failures
    assert max(tiers) == (86400, 100)  # hard limit: 100 consecutive failures a day


@pytest.mark.parametrize("settings_overrides", [{"login_ip_limit": "3 per minute"}])
def test_J67_per_ip_limit_ignores_a_spoofed_forwarded_for(client):
    for i in range(3):
        r = client.post("/api/v1/auth/login", json={"email": f"u{i}@example.com", "password": "x" * 8},
                        headers={"X-Forwarded-For": f"198.51.100.{i}"})
        assert r.status_code == 401
    r = client.post("/api/v1/auth/login", json={"email": "u9@example.com", "password": "x" * 8},
                    headers={"X-Forwarded-For": "198.51.100.77"})
    assert r.status_code == 429 and r.mimetype == "application/problem+json"
    # Another client address (as the server sees it) has its own count.
    r = client.post("/api/v1/auth/login", json={"email": "u9@example.com", "password": "x" * 8},
                    environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert r.status_code == 401


@pytest.mark.parametrize("settings_overrides", [{"proxy_count": 1, "login_ip_limit": "2 per minute"}])
def test_J67_behind_a_configured_proxy_the_forwarded_client_address_is_the_key(client):
    def attempt(forwarded):
        return client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x" * 8},
                           headers={"X-Forwarded-For": forwarded})

    assert attempt("203.0.113.1").status_code == 401
    assert attempt("203.0.113.1").status_code == 401
    assert attempt("203.0.113.1").status_code == 429
    assert attempt("203.0.113.2").status_code == 401  # a different client behind the proxy
    # Only the hop the proxy added counts: a client prepending its own entries does not escape.
    assert attempt("10.9.9.9, 203.0.113.1").status_code == 429


@pytest.mark.parametrize("settings_overrides", [{"register_ip_limit": "2 per minute", "reset_ip_limit": "2 per minute",
                                                 "otp_ip_limit": "2 per minute"}])
def test_J67_per_ip_limits_on_registration_reset_and_otp(client):
    for i in range(2):
        assert register(client, f"r{i}@example.com").status_code == 201
    assert register(client, "r9@example.com").status_code == 429
    for _ in range(2):
        assert client.post("/api/v1/auth/password-reset", json={"email": "x@example.com"}).status_code == 202
    assert client.post("/api/v1/auth/password-reset", json={"email": "x@example.com"}).status_code == 429
    r = login(client, "r0@example.com")
    csrf = {"X-CSRF-Token": r.json["csrf_token"]}
    for _ in range(2):
        assert client.post("/api/v1/auth/mfa", json={"code": "000000"}, headers=csrf).status_code == 401
    assert client.post("/api/v1/auth/mfa", json={"code": "000000"}, headers=csrf).status_code == 429


def test_K76_login_issues_a_new_session_id_and_retires_the_pre_login_one(client, database):
    csrf = signed_in(client)
    first = cookie(client)
    r = login(client)
    second = cookie(client)
    assert r.status_code == 200 and second != first
    client.set_cookie(SESSION_COOKIE, first)
    assert client.get("/api/v1/me").status_code == 401
    client.set_cookie(SESSION_COOKIE, second)
    assert client.get("/api/v1/me").status_code == 200
    with database.engine.connect() as conn:
        hashes = conn.execute(sa.select(Session.token_hash)).scalars().all()
    assert first not in hashes and second not in hashes
    assert csrf["X-CSRF-Token"] != r.json["csrf_token"]


def test_K77_logout_invalidates_the_session_server_side(client):
    csrf = signed_in(client)
    old = cookie(client)
    r = client.post("/api/v1/auth/logout", headers=csrf)
    assert r.status_code == 204 and "Max-Age=0" in r.headers["Set-Cookie"]
    client.set_cookie(SESSION_COOKIE, old)  # replay the old cookie
    r = client.get("/api/v1/me")
    assert r.status_code == 401 and r.mimetype == "application/problem+json"


def test_logout_needs_csrf_with_a_cookie(client):
    signed_in(client)
    assert client.post("/api/v1/auth/logout").status_code == 400
    assert client.get("/api/v1/me").status_code == 200


def test_personal_api_token_works_as_bearer_and_is_revocable(client, database):
    register(client)
    r = client.post("/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 201 and r.json["token"].startswith("cpt_")
    assert client.get_cookie(SESSION_COOKIE) is None
    bearer = {"Authorization": f"Bearer {r.json['token']}"}
    assert client.get("/api/v1/me", headers=bearer).json["email"] == "ada@example.com"
    # No CSRF token needed for a bearer request (a browser never adds the header by itself).
    assert client.patch("/api/v1/me", json={"name": "Ada King"}, headers=bearer).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=bearer).status_code == 204
    assert client.get("/api/v1/me", headers=bearer).status_code == 401
    bad = client.post("/api/v1/auth/token", json={"email": "ada@example.com", "password": "nope nope"})
    assert bad.status_code == 401 and bad.json["code"] == "invalid_credentials"


def test_sign_in_from_a_new_device_sends_a_notice(client):
    register(client)
    login(client)  # the first sign-in of a new account: nothing to compare with
    login(client)  # the same browser again
    assert outbox("new_sign_in") == []
    client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD},
                headers={"User-Agent": "Another browser/1.0"})
    [(_template, to, context)] = outbox("new_sign_in")
    assert to == "ada@example.com" and context["ip_prefix"] == "127.0.0.0/24"
    assert context["user_agent"] == "Another browser/1.0"


def test_failed_and_successful_logins_are_security_events(client, database):
    register(client)
    login(client, password="wrong password")
    login(client, "nobody@example.com", "wrong password")
    login(client)
    with database.engine.connect() as conn:
        kinds = conn.execute(sa.select(SecurityEvent.kind, SecurityEvent.user_id).order_by(SecurityEvent.id)).all()
    assert [k for k, _ in kinds if k.startswith("login")] == ["login_failed", "login_failed", "login"]


def test_login_bad_input_is_400_and_changes_nothing(client, database):
    from tests.conftest import table_snapshot

    register(client)
    before = table_snapshot(database)
    for body in ({"email": "ada@example.com"}, {"password": PASSWORD}, {"email": 5, "password": PASSWORD},
                 {"email": "ada@example.com", "password": PASSWORD, "remember": True}):
        r = client.post("/api/v1/auth/login", json=body)
        assert r.status_code == 400 and r.mimetype == "application/problem+json", body
    assert table_snapshot(database) == before
