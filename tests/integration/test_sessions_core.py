"""Server-side sessions and the auth decorators (credits.accounts.sessions, credits.web.auth) on a probe route."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import g, jsonify

from credits.accounts import sessions
from credits.accounts.models import Session
from credits.db import unit_of_work
from credits.web.auth import SESSION_COOKIE, current_user_id, login_required, staff_required


@pytest.fixture
def probe(app):
    """Routes that only say who the caller is (added before the first request)."""

    @login_required
    def whoami():
        return jsonify(user_id=current_user_id(), role=g.role, session_id=g.session_id)

    @login_required
    def change():
        return jsonify(ok=True)

    @staff_required("accounts.read")
    def staff_only():
        return jsonify(ok=True)

    app.add_url_rule("/api/v1/_probe/whoami", "probe_whoami", whoami, methods=["GET"])
    app.add_url_rule("/api/v1/_probe/change", "probe_change", change, methods=["POST"])
    app.add_url_rule("/api/v1/staff/_probe", "probe_staff", staff_only, methods=["GET"])
    return app


def _session(user_id, *, kind="web", mfa_ok=False):
    with unit_of_work() as uow:
        new = sessions.create(uow.session, user_id, kind=kind, mfa_ok=mfa_ok, ip="203.0.113.9", user_agent="pytest")
        uow.commit()
    return new


def test_K76_session_token_is_random_and_only_its_hash_is_stored(probe, make, database):
    user = make.account()
    one, two = _session(user.user_id), _session(user.user_id)
    assert one.token != two.token and len(one.token) >= 43
    with database.engine.connect() as conn:
        hashes = conn.execute(sa.select(Session.token_hash)).scalars().all()
    assert sessions.token_hash(one.token) in hashes and one.token not in hashes


def test_K78_idle_and_absolute_timeouts(probe, make, client, clock):
    user = make.account()
    new = _session(user.user_id)
    client.set_cookie(SESSION_COOKIE, new.token)
    assert client.get("/api/v1/_probe/whoami").status_code == 200
    clock.advance(minutes=29)
    assert client.get("/api/v1/_probe/whoami").status_code == 200  # activity moves the idle deadline
    clock.advance(minutes=29)
    assert client.get("/api/v1/_probe/whoami").status_code == 200
    clock.advance(minutes=30)
    r = client.get("/api/v1/_probe/whoami")
    assert r.status_code == 401 and r.mimetype == "application/problem+json"

    fresh = _session(user.user_id)
    client.set_cookie(SESSION_COOKIE, fresh.token)
    for _ in range(12 * 3):
        assert client.get("/api/v1/_probe/whoami").status_code == 200
        clock.advance(minutes=20)
    assert client.get("/api/v1/_probe/whoami").status_code == 401  # 12 h absolute lifetime


def test_K77_revoked_session_is_refused(probe, make, client):
    user = make.account()
    new = _session(user.user_id)
    client.set_cookie(SESSION_COOKIE, new.token)
    assert client.get("/api/v1/_probe/whoami").json["user_id"] == user.user_id
    sessions.revoke(new.info.id, user_id=user.user_id)
    assert client.get("/api/v1/_probe/whoami").status_code == 401


def test_K81_cookie_request_without_csrf_token_is_400_and_bearer_needs_none(probe, make, client):
    user = make.account()
    new = _session(user.user_id)
    client.set_cookie(SESSION_COOKIE, new.token)
    r = client.post("/api/v1/_probe/change")
    assert r.status_code == 400 and r.json["code"] == "csrf_failed"
    assert client.post("/api/v1/_probe/change", headers={"X-CSRF-Token": "wrong"}).status_code == 400
    assert client.post("/api/v1/_probe/change", headers={"X-CSRF-Token": new.info.csrf_token}).status_code == 200
    client.delete_cookie(SESSION_COOKIE)
    token = _session(user.user_id, kind="api")
    r = client.post("/api/v1/_probe/change", headers={"Authorization": f"Bearer {token.token}"})
    assert r.status_code == 200
    # A web session token is not a personal API token, and the other way round.
    assert client.get("/api/v1/_probe/whoami", headers={"Authorization": f"Bearer {new.token}"}).status_code == 401
    client.set_cookie(SESSION_COOKIE, token.token)
    assert client.get("/api/v1/_probe/whoami").status_code == 401


def test_J71_staff_route_needs_staff_role_and_second_factor(probe, make, client):
    customer = make.account()
    staff = make.account(role="support")
    client.set_cookie(SESSION_COOKIE, _session(customer.user_id, mfa_ok=True).token)
    assert client.get("/api/v1/staff/_probe").status_code == 403
    client.set_cookie(SESSION_COOKIE, _session(staff.user_id, mfa_ok=False).token)
    assert client.get("/api/v1/staff/_probe").status_code == 403
    client.set_cookie(SESSION_COOKIE, _session(staff.user_id, mfa_ok=True).token)
    assert client.get("/api/v1/staff/_probe").status_code == 200
    client.delete_cookie(SESSION_COOKIE)
    assert client.get("/api/v1/staff/_probe").status_code == 401


def test_closed_account_sessions_stop_working(probe, make, client):
    from credits.accounts import service as accounts

    user = make.account()
    client.set_cookie(SESSION_COOKIE, _session(user.user_id).token)
    assert client.get("/api/v1/_probe/whoami").status_code == 200
    accounts.set_status(user.user_id, "closed")
    assert client.get("/api/v1/_probe/whoami").status_code == 401


def test_staff_required_refuses_unknown_permission():
    with pytest.raises(ValueError):
        staff_required("accounts.raed")


def test_touch_writes_at_most_once_a_minute(probe, make, client, clock, database):
    user = make.account()
    new = _session(user.user_id)
    client.set_cookie(SESSION_COOKIE, new.token)
    client.get("/api/v1/_probe/whoami")
    with database.engine.connect() as conn:
        seen = conn.execute(sa.select(Session.last_seen_at).where(Session.id == new.info.id)).scalar_one()
    assert seen == new.info.last_seen_at
    clock.advance(timedelta(seconds=61))
    client.get("/api/v1/_probe/whoami")
    with database.engine.connect() as conn:
        seen = conn.execute(sa.select(Session.last_seen_at).where(Session.id == new.info.id)).scalar_one()
    assert seen == clock.now()
