"""Sessions through the API (CHECKLIST K78, K79), security headers (K80), CSRF (K81), production errors (K82)."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa

from tests.conftest import table_snapshot
from tests.integration.accounts_helpers import PASSWORD, cookie, login, signed_in, staff_client


def test_K78_idle_timeout_and_absolute_lifetime_match_the_documented_settings(client, clock):
    from credits.config import Config

    defaults = Config()
    assert (defaults.session_idle_minutes, defaults.session_absolute_hours) == (30, 12)
    signed_in(client)
    clock.advance(minutes=29)
    assert client.get("/api/v1/me").status_code == 200
    clock.advance(minutes=30)
    r = client.get("/api/v1/me")
    assert r.status_code == 401  # 30 minutes without a request

    login(client)
    for _ in range(11 * 3 + 2):  # active every 20 minutes: alive until 12 h after sign-in
        assert client.get("/api/v1/me").status_code == 200
        clock.advance(minutes=20)
    assert client.get("/api/v1/me").status_code == 200  # 11 h 40 min
    clock.advance(minutes=21)
    assert client.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("settings_overrides", [{"session_idle_minutes": 5, "session_absolute_hours": 1}])
def test_K78_timeouts_follow_the_settings(client, clock):
    signed_in(client)
    clock.advance(minutes=4)
    assert client.get("/api/v1/me").status_code == 200
    clock.advance(minutes=5)
    assert client.get("/api/v1/me").status_code == 401


def test_K78_personal_tokens_have_their_own_lifetime(client, clock):
    from tests.integration.accounts_helpers import register

    register(client)
    token = client.post("/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}).json
    bearer = {"Authorization": f"Bearer {token['token']}"}
    clock.advance(days=29)
    assert client.get("/api/v1/me", headers=bearer).status_code == 200
    clock.advance(days=31)
    assert client.get("/api/v1/me", headers=bearer).status_code == 401  # idle 31 days


def test_K79_list_sessions_and_revoke_one_or_all_others(client, app):
    csrf = signed_in(client)
    other = app.test_client()
    login(other)
    other_cookie = cookie(other)
    third = app.test_client()
    login(third)
    r = client.get("/api/v1/me/sessions")
    assert r.status_code == 200
    listed = r.json["sessions"]
    assert len(listed) == 3 and sum(s["current"] for s in listed) == 1
    assert {"id", "kind", "created_at", "last_seen_at", "expires_at", "ip_prefix", "user_agent"} <= set(listed[0])
    assert all("token" not in key for s in listed for key in s)
    other_id = [s["id"] for s in listed if not s["current"]][-1]
    # Revoke one by id; the holder of that session is signed out.
    assert client.delete(f"/api/v1/me/sessions/{other_id}", headers=csrf).status_code == 204
    assert client.delete(f"/api/v1/me/sessions/{other_id}", headers=csrf).status_code == 404
    statuses = {other.get("/api/v1/me").status_code, third.get("/api/v1/me").status_code}
    assert statuses == {200, 401}
    # Revoke all the others.
    r = client.delete("/api/v1/me/sessions", headers=csrf)
    assert r.status_code == 200 and r.json["revoked"] == 1
    assert other.get("/api/v1/me").status_code == 401 and third.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").status_code == 200
    assert [s["current"] for s in client.get("/api/v1/me/sessions").json["sessions"]] == [True]
    assert other_cookie


def test_K79_a_session_of_another_user_is_404(client, app):
    csrf = signed_in(client)
    mallory = app.test_client()
    signed_in(mallory, "mallory@example.com")
    mallory_session = mallory.get("/api/v1/me/sessions").json["sessions"][0]["id"]
    assert client.delete(f"/api/v1/me/sessions/{mallory_session}", headers=csrf).status_code == 404
    assert mallory.get("/api/v1/me").status_code == 200


def test_K79_staff_can_revoke_all_sessions_of_a_user_audit_logged(client, app, make, clock, database):
    from credits.audit import AuditEntry

    signed_in(client)
    user_id = client.get("/api/v1/me").json["id"]
    staff, staff_csrf = staff_client(app, make)
    r = staff.delete(f"/api/v1/staff/accounts/{user_id}/sessions", headers=staff_csrf)
    assert r.status_code == 200 and r.json["revoked"] == 1
    assert client.get("/api/v1/me").status_code == 401
    assert staff.delete("/api/v1/staff/accounts/999999/sessions", headers=staff_csrf).status_code == 404
    with database.engine.connect() as conn:
        actions = conn.execute(sa.select(AuditEntry.action, AuditEntry.subject)).all()
    assert ("sessions.revoke_all", f"user:{user_id}") in actions


# ---------------------------------------------------------------- K80: headers


def _assert_security_headers(r):
    h = r.headers
    hsts = h["Strict-Transport-Security"]
    assert "includeSubDomains" in hsts and int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000
    csp = h["Content-Security-Policy"]
    for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'", "default-src 'self'"):
        assert directive in csp
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] in ("no-referrer", "strict-origin-when-cross-origin", "same-origin")


def test_K80_security_headers_on_every_response_and_no_store_when_authenticated(client):
    for r in (client.get("/"), client.get("/healthz"), client.get("/api/v1/openapi.json"),
              client.get("/no/such/page"), client.get("/api/v1/me"),
              client.post("/api/v1/auth/login", json={})):
        _assert_security_headers(r)
    signed_in(client)
    for path in ("/api/v1/me", "/api/v1/me/wallet", "/api/v1/me/sessions"):
        r = client.get(path)
        _assert_security_headers(r)
        assert r.status_code == 200 and "no-store" in r.headers["Cache-Control"]
    login_response = login(client)
    assert "no-store" in login_response.headers["Cache-Control"]


def test_K80_csp_allows_only_self_and_stripe(client):
    csp = client.get("/").headers["Content-Security-Policy"]
    sources = {token for part in csp.split(";") for token in part.split()[1:]}
    assert sources <= {"'self'", "'none'", "data:", "https://js.stripe.com", "https://api.stripe.com",
                       "https://hooks.stripe.com"} | {s for s in sources if s.startswith("http://127.0.0.1")}
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp and "*" not in csp


# ---------------------------------------------------------------- K81: CSRF


def test_K81_cookie_requests_that_change_state_need_the_csrf_token(client, database):
    csrf = signed_in(client)
    before = table_snapshot(database)
    attempts = [
        ("patch", "/api/v1/me", {"name": "Mallory"}),
        ("post", "/api/v1/me/password", {"current_password": PASSWORD, "new_password": "lantern meadow orbit 7"}),
        ("delete", "/api/v1/me/sessions", None),
        ("post", "/api/v1/me/mfa/totp", {"password": PASSWORD}),
        ("post", "/api/v1/auth/logout", None),
    ]
    for method, path, body in attempts:
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
            r = getattr(client, method)(path, json=body, headers=headers)
            assert r.status_code == 400 and r.json["code"] == "csrf_failed", (method, path, headers)
    assert table_snapshot(database) == before
    assert client.patch("/api/v1/me", json={"name": "Ada K"}, headers=csrf).status_code == 200


def test_K81_get_never_changes_state(client, database, clock):
    signed_in(client)
    before = table_snapshot(database)
    for route in client.application.url_map.iter_rules():
        if "GET" in route.methods and not route.arguments and route.rule.startswith("/api/v1/me"):
            client.get(route.rule)
    assert table_snapshot(database) == before


# ---------------------------------------------------------------- K82: production errors


def test_K82_production_errors_carry_no_stack_trace_sql_or_secret(backend, clock):
    from credits import create_app
    from credits.config import Config

    key = base64.b64encode(b"k" * 32).decode()
    cfg = Config(env="production", database_url="postgresql://app@127.0.0.1:1/credits", secret_key="s" * 40,
                 encryption_keys=f"p1:{key}", blind_index_key=key, public_url="https://credits.example")
    app = create_app(cfg)
    assert app.debug is False and app.config["PROPAGATE_EXCEPTIONS"] is False

    def boom():
        raise RuntimeError("SELECT password_hash FROM users WHERE token = 'cpt_secret_token_value'")

    def db_boom():
        raise sa.exc.OperationalError("SELECT * FROM users", {"p": "secret-param"}, Exception("conn refused"))

    app.add_url_rule("/api/v1/_boom", "boom", boom)
    app.add_url_rule("/_boom_page", "boom_page", boom)
    app.add_url_rule("/api/v1/_db_boom", "db_boom", db_boom)
    client = app.test_client()
    for path in ("/api/v1/_boom", "/_boom_page", "/api/v1/_db_boom"):
        r = client.get(path)
        assert r.status_code == 500
        text = r.get_data(as_text=True)
        for leak in ("Traceback", "RuntimeError", "SELECT", "password_hash", "cpt_secret", "secret-param", 'File "'):
            assert leak not in text, (path, leak)
        _assert_security_headers(r)
    r = client.get("/api/v1/_boom")
    assert r.mimetype == "application/problem+json" and r.json["request_id"]
    # The app's own database may be unreachable here; what matters is that it says nothing about it.
    r = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "whatever 123"})
    assert "Traceback" not in r.get_data(as_text=True) and "127.0.0.1:1" not in r.get_data(as_text=True)
