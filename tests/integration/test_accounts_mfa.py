"""Second factor (CHECKLIST J68-J71): TOTP enrolment, replay guard, recovery codes, MFA for staff."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa

from credits.accounts.models import RecoveryCode, User
from credits.web.auth import SESSION_COOKIE
from tests.integration.accounts_helpers import (
    PASSWORD,
    cookie,
    enrol_totp,
    login,
    outbox,
    signed_in,
    totp_now,
)


def _user(database):
    with database.engine.connect() as conn:
        return conn.execute(sa.select(User.__table__)).one()


def test_J68_enrolment_seed_is_160_bits_encrypted_and_needs_a_valid_code(client, database, clock):
    csrf = signed_in(client)
    r = client.post("/api/v1/me/mfa/totp", json={"password": PASSWORD}, headers=csrf)
    assert r.status_code == 201
    secret = r.json["secret"]
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) * 8 >= 160
    assert r.json["otpauth_uri"].startswith("otpauth://totp/") and f"secret={secret}" in r.json["otpauth_uri"]
    assert r.json["qr_svg"].startswith("data:image/svg+xml")
    row = _user(database)
    assert row.mfa_secret_enc.startswith("v1.") and secret not in row.mfa_secret_enc
    assert row.mfa_enabled_at is None  # pending until confirmed
    # Not active yet: signing in asks for no code.
    assert client.get("/api/v1/me").json["mfa_enabled"] is False
    wrong = client.post("/api/v1/me/mfa/totp/confirm", json={"code": "000000"}, headers=csrf)
    assert wrong.status_code == 401 and wrong.json["code"] == "mfa_invalid"
    assert _user(database).mfa_enabled_at is None
    ok = client.post("/api/v1/me/mfa/totp/confirm", json={"code": totp_now(secret)}, headers=csrf)
    assert ok.status_code == 200 and len(ok.json["recovery_codes"]) == 10
    assert _user(database).mfa_enabled_at is not None
    assert [m[2]["change"] for m in outbox("mfa_changed")] == ["enabled"]


def test_J68_enrolment_needs_the_password_and_cannot_overwrite_an_active_seed(client):
    csrf = signed_in(client)
    r = client.post("/api/v1/me/mfa/totp", json={"password": "not my password"}, headers=csrf)
    assert r.status_code == 403 and r.json["code"] == "reauthentication_failed"
    _secret, _codes, csrf = enrol_totp(client, csrf)
    again = client.post("/api/v1/me/mfa/totp", json={"password": PASSWORD}, headers=csrf)
    assert again.status_code == 409


def test_K76_enrolment_gives_the_session_a_new_id(client):
    csrf = signed_in(client)
    before = cookie(client)
    enrol_totp(client, csrf)
    after = cookie(client)
    assert after != before
    client.set_cookie(SESSION_COOKIE, before)
    assert client.get("/api/v1/me").status_code == 401


@pytest.fixture
def mfa_user(client, clock):
    """A signed-out customer with TOTP on: (secret, recovery codes)."""
    csrf = signed_in(client)
    secret, codes, csrf = enrol_totp(client, csrf)
    client.post("/api/v1/auth/logout", headers=csrf)
    clock.advance(seconds=30)  # the enrolment code's step is used up
    return secret, codes


def test_J69_login_needs_the_second_factor_then_current_code_passes(client, mfa_user, clock):
    secret, _codes = mfa_user
    r = login(client)
    assert r.status_code == 200 and r.json["mfa_required"] is True
    pending = cookie(client)
    me = client.get("/api/v1/me")
    assert me.status_code == 401 and me.json["code"] == "mfa_required"
    r = client.post("/api/v1/auth/mfa", json={"code": totp_now(secret)}, headers={"X-CSRF-Token": r.json["csrf_token"]})
    assert r.status_code == 200 and r.json["mfa_required"] is False
    assert cookie(client) != pending  # K76: new id once the second factor passed
    assert client.get("/api/v1/me").status_code == 200
    client.set_cookie(SESSION_COOKIE, pending)
    assert client.get("/api/v1/me").status_code == 401


def test_J69_totp_code_rejected_on_replay(client, mfa_user, database):
    secret, _codes = mfa_user
    code = totp_now(secret)
    assert login(client, totp=code).status_code == 200
    client.delete_cookie(SESSION_COOKIE)
    replay = login(client, totp=code)
    assert replay.status_code == 401 and replay.json["code"] == "mfa_invalid"
    assert client.get_cookie(SESSION_COOKIE) is None
    assert _user(database).mfa_last_step is not None


def test_J69_adjacent_step_only_if_configured_and_two_steps_ahead_rejected(client, mfa_user, clock, app):
    from credits import config

    secret, _codes = mfa_user
    assert login(client, totp=totp_now(secret, +2)).status_code == 401
    assert login(client, totp=totp_now(secret, -2)).status_code == 401
    assert config.current().totp_valid_window == 1  # the documented default: one step of drift each way
    assert login(client, totp=totp_now(secret, +1)).status_code == 200
    clock.advance(seconds=90)
    config.install(config.Config(**{**config.current().__dict__, "totp_valid_window": 0}))
    assert login(client, totp=totp_now(secret, -1)).status_code == 401
    assert login(client, totp=totp_now(secret, +1)).status_code == 401
    assert login(client, totp=totp_now(secret)).status_code == 200


def test_J70_ten_recovery_codes_stored_hashed_each_single_use(client, mfa_user, database):
    _secret, codes = mfa_user
    assert len(codes) == 10 and len(set(codes)) == 10
    with database.engine.connect() as conn:
        stored = conn.execute(sa.select(RecoveryCode.code_hash)).scalars().all()
    assert len(stored) == 10 and not set(codes) & set(stored)
    assert all(len(h) == 64 for h in stored)
    # 120 bits each (24 base32 characters): at least the 112 bits ASVS asks of SHA-256-hashed codes.
    assert all(len(c.replace("-", "")) * 5 >= 112 for c in codes)
    r = login(client)
    csrf = {"X-CSRF-Token": r.json["csrf_token"]}
    assert client.post("/api/v1/auth/mfa", json={"code": codes[0]}, headers=csrf).status_code == 200
    client.delete_cookie(SESSION_COOKIE)
    r = login(client)
    csrf = {"X-CSRF-Token": r.json["csrf_token"]}
    again = client.post("/api/v1/auth/mfa", json={"code": codes[0]}, headers=csrf)
    assert again.status_code == 401
    assert client.post("/api/v1/auth/mfa", json={"code": codes[1].upper()}, headers=csrf).status_code == 200
    client.delete_cookie(SESSION_COOKIE)
    assert login(client, totp=codes[2]).status_code == 200  # also accepted in place of the TOTP at login


def test_recovery_codes_can_be_regenerated_and_totp_turned_off(client, mfa_user, clock):
    secret, codes = mfa_user
    r = login(client, totp=totp_now(secret))
    csrf = {"X-CSRF-Token": r.json["csrf_token"]}
    clock.advance(seconds=30)
    r = client.post("/api/v1/me/mfa/recovery-codes", json={"code": totp_now(secret)}, headers=csrf)
    assert r.status_code == 200 and len(r.json["recovery_codes"]) == 10
    clock.advance(seconds=30)
    off = client.delete("/api/v1/me/mfa/totp", json={"password": PASSWORD, "code": codes[0]}, headers=csrf)
    assert off.status_code == 401  # the old codes stopped working
    off = client.delete("/api/v1/me/mfa/totp", json={"password": PASSWORD, "code": totp_now(secret)}, headers=csrf)
    assert off.status_code == 204
    assert client.get("/api/v1/me").json["mfa_enabled"] is False
    assert [m[2]["change"] for m in outbox("mfa_changed")] == ["enabled", "recovery_codes_regenerated", "disabled"]


def test_personal_token_with_mfa_needs_the_code(client, mfa_user):
    secret, _codes = mfa_user
    body = {"email": "ada@example.com", "password": PASSWORD}
    r = client.post("/api/v1/auth/token", json=body)
    assert r.status_code == 401 and r.json["code"] == "mfa_required"
    r = client.post("/api/v1/auth/token", json={**body, "totp": totp_now(secret)})
    assert r.status_code == 201


def _staff_probe(app):
    from flask import jsonify

    from credits.web.auth import staff_required

    @staff_required("accounts.read")
    def probe():
        return jsonify(ok=True)

    app.add_url_rule("/api/v1/staff/_mfa_probe", "mfa_probe", probe)


def test_J71_staff_login_without_second_factor_cannot_reach_staff_routes(app, client, make, clock):
    _staff_probe(app)
    make.account("agent@example.com", role="support")  # the factory's password: "correct horse battery"
    r = login(client, "agent@example.com", "correct horse battery")
    assert r.status_code == 200 and r.json["role"] == "support"
    csrf = {"X-CSRF-Token": r.json["csrf_token"]}
    assert client.get("/api/v1/staff/_mfa_probe").status_code == 403
    assert client.delete("/api/v1/staff/accounts/1/sessions", headers=csrf).status_code == 403
    # A personal token without a second factor does not reach staff routes either.
    t = client.post("/api/v1/auth/token", json={"email": "agent@example.com", "password": "correct horse battery"})
    bearer = {"Authorization": f"Bearer {t.json['token']}"}
    assert client.get("/api/v1/staff/_mfa_probe", headers=bearer).status_code == 403
    # Enrol (allowed from the password-only session), and the new session passes.
    secret, _codes, csrf = enrol_totp(client, csrf, password="correct horse battery")
    assert client.get("/api/v1/staff/_mfa_probe").status_code == 200
    # Staff may not turn the second factor off.
    clock.advance(seconds=30)
    off = client.delete("/api/v1/me/mfa/totp", json={"password": "correct horse battery", "code": totp_now(secret)},
                        headers=csrf)
    assert off.status_code == 403
    # Next sign-in: password alone leaves the session short of the staff routes.
    client.delete_cookie(SESSION_COOKIE)
    r = login(client, "agent@example.com", "correct horse battery")
    assert r.json["mfa_required"] is True
    assert client.get("/api/v1/staff/_mfa_probe").status_code in (401, 403)
    r = client.post("/api/v1/auth/mfa", json={"code": totp_now(secret, +1)},
                    headers={"X-CSRF-Token": r.json["csrf_token"]})
    assert r.status_code == 200
    assert client.get("/api/v1/staff/_mfa_probe").status_code == 200


def test_mfa_endpoints_bad_input_is_400_and_changes_nothing(client, database):
    from tests.conftest import table_snapshot

    csrf = signed_in(client)
    before = table_snapshot(database)
    for path, body in (("/api/v1/me/mfa/totp", {}), ("/api/v1/me/mfa/totp", {"password": PASSWORD, "x": 1}),
                       ("/api/v1/me/mfa/totp/confirm", {"code": 123456}), ("/api/v1/auth/mfa", {"code": "1"})):
        r = client.post(path, json=body, headers=csrf)
        assert r.status_code == 400, (path, body, r.json)
    assert table_snapshot(database) == before
