"""Password reset and change (CHECKLIST J72, J73): single-use hashed tokens, sessions revoked, notices sent."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from credits.accounts.models import EmailToken
from credits.web.auth import SESSION_COOKIE
from tests.conftest import row_counts, table_snapshot
from tests.integration.accounts_helpers import (
    PASSWORD,
    cookie,
    enrol_totp,
    login,
    outbox,
    register,
    signed_in,
    totp_now,
)

NEW = "lantern meadow orbit 7"


def _reset(client, email="ada@example.com"):
    return client.post("/api/v1/auth/password-reset", json={"email": email})


def _reset_token():
    return outbox("password_reset")[-1][2]["token"]


def _confirm(client, token, password=NEW):
    return client.post("/api/v1/auth/password-reset/confirm", json={"token": token, "password": password})


def test_J73_forgot_password_answers_the_same_for_unknown_addresses(client, database):
    register(client)
    known = _reset(client)
    before = row_counts(database)
    unknown = _reset(client, "nobody@example.com")
    malformed = _reset(client, "not an address")
    assert known.status_code == unknown.status_code == malformed.status_code == 202
    assert known.json == unknown.json == malformed.json
    assert known.headers.get("Set-Cookie") is None and unknown.headers.get("Set-Cookie") is None
    assert row_counts(database)["outbox"] == before["outbox"]  # nothing queued for the unknown address
    assert len(outbox("password_reset")) == 1


def test_J72_token_is_random_hashed_single_use_and_expires_within_30_minutes(client, database, clock):
    register(client)
    _reset(client)
    token = _reset_token()
    assert len(token) >= 43  # 256 bits, URL-safe base64
    with database.engine.connect() as conn:
        row = conn.execute(sa.select(EmailToken.__table__).where(EmailToken.purpose == "reset_password")).one()
    assert row.token_hash != token and len(row.token_hash) == 64
    assert row.expires_at - row.created_at <= timedelta(minutes=30)
    assert _confirm(client, token).status_code == 200
    assert _confirm(client, token, "another long phrase 9").status_code == 400  # single use
    assert login(client, password=NEW).status_code == 200
    # Expiry.
    _reset(client)
    late = _reset_token()
    clock.advance(minutes=31)
    r = _confirm(client, late, "yet another phrase 11")
    assert r.status_code == 400 and r.json["code"] == "invalid_token"


def test_J72_one_active_token_per_user(client):
    register(client)
    _reset(client)
    first = _reset_token()
    _reset(client)
    second = _reset_token()
    assert _confirm(client, first).status_code == 400  # replaced by the newer link
    assert _confirm(client, second).status_code == 200


def test_J72_reset_revokes_all_sessions_notifies_and_does_not_sign_in(client, database):
    csrf = signed_in(client)
    web = cookie(client)
    token = client.post("/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}).json["token"]
    _reset(client)
    r = _confirm(client, _reset_token())
    assert r.status_code == 200 and r.headers.get("Set-Cookie") is None
    client.set_cookie(SESSION_COOKIE, web)
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert [m[2]["how"] for m in outbox("password_changed")] == ["reset"]
    assert login(client).status_code == 401 and login(client, password=NEW).status_code == 200
    assert csrf


def test_J72_reset_does_not_get_past_mfa(client, clock):
    csrf = signed_in(client)
    secret, _codes, csrf = enrol_totp(client, csrf)
    client.post("/api/v1/auth/logout", headers=csrf)
    _reset(client)
    assert _confirm(client, _reset_token()).status_code == 200
    r = login(client, password=NEW)
    assert r.status_code == 200 and r.json["mfa_required"] is True
    assert client.get("/api/v1/me").status_code == 401
    clock.advance(seconds=30)
    assert client.post("/api/v1/auth/mfa", json={"code": totp_now(secret)},
                       headers={"X-CSRF-Token": r.json["csrf_token"]}).status_code == 200


def test_reset_with_a_weak_password_is_400_and_keeps_the_token(client, database):
    register(client)
    _reset(client)
    token = _reset_token()
    before = table_snapshot(database)
    r = _confirm(client, token, "password1")
    assert r.status_code == 400 and r.json["field"] == "password"
    assert table_snapshot(database) == before
    assert _confirm(client, token).status_code == 200


def test_reset_clears_reset_required(client, database):
    from credits.accounts.models import User

    register(client)
    with database.engine.begin() as conn:
        conn.execute(sa.update(User.__table__).values(reset_required=True))
    r = login(client)
    assert r.status_code == 403 and r.json["code"] == "password_reset_required"
    _reset(client)
    _confirm(client, _reset_token())
    assert login(client, password=NEW).status_code == 200


def test_password_change_logs_out_everywhere_else_and_notifies(client, app):
    csrf = signed_in(client)
    mine = cookie(client)
    other = app.test_client()
    login(other)
    elsewhere = cookie(other)
    token = client.post("/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}).json["token"]
    client.set_cookie(SESSION_COOKIE, mine)
    wrong = client.post("/api/v1/me/password", json={"current_password": "nope nope", "new_password": NEW},
                        headers=csrf)
    assert wrong.status_code == 403 and wrong.json["code"] == "reauthentication_failed"
    weak = client.post("/api/v1/me/password", json={"current_password": PASSWORD, "new_password": "qwertyuiop"},
                       headers=csrf)
    assert weak.status_code == 400
    r = client.post("/api/v1/me/password", json={"current_password": PASSWORD, "new_password": NEW}, headers=csrf)
    assert r.status_code == 204
    assert client.get("/api/v1/me").status_code == 200  # this session stays
    other.set_cookie(SESSION_COOKIE, elsewhere)
    assert other.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert [m[2]["how"] for m in outbox("password_changed")] == ["change"]
    assert client.post("/api/v1/me/password", json={"current_password": PASSWORD, "new_password": NEW}).status_code \
        == 400  # CSRF
