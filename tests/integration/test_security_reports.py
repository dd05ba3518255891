"""Compromise and unauthorised-transaction reports (CHECKLIST P104, P105), the money freeze, the staff queue and
unfreeze; the signed-out "this wasn't me" link followed from an email read off a real SMTP server."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits import audit
from credits.accounts import service as accounts
from credits.accounts import sessions
from credits.db import unit_of_work
from credits.errors import MoneyFrozen
from credits.ledger import service as ledger
from credits.notify import delivery, notices
from credits.notify.outbox import read
from credits.web.auth import SESSION_COOKIE
from tests.conftest import table_snapshot
from tests.integration.smtp_server import SmtpSink, body_text

USD = 1_000_000
REFERENCE = re.compile(r"^SR-[0-9A-Z]{4}-[0-9A-Z]{4}$")
LINK = re.compile(r"https?://\S+/security/compromised\?token=[A-Za-z0-9_-]+")


@pytest.fixture
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def settings_overrides(smtp):
    return {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "public_url": "https://credits.example.net"}


def _session(user_id: int, *, kind: str = "web", mfa_ok: bool = True) -> sessions.NewSession:
    with unit_of_work() as uow:
        new = sessions.create(uow.session, user_id, kind=kind, mfa_ok=mfa_ok, ip="203.0.113.9", user_agent="pytest")
        uow.commit()
    return new


def _as(client: Any, user_id: int, **kw: Any) -> dict[str, str]:
    """Sign `client` in as `user_id` with a cookie session; return the CSRF header for unsafe calls."""
    new = _session(user_id, **kw)
    client.set_cookie(SESSION_COOKIE, new.token)
    return {"X-CSRF-Token": new.info.csrf_token}


def _staff(make: Any, client: Any, role: str = "support", **kw: Any) -> tuple[Any, dict[str, str]]:
    person = make.account(f"{role}{make.n}@example.com", role=role)
    return person, _as(client, person.user_id, **kw)


def _rows(database: Any, sql: str, **params: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def _user(database: Any, user_id: int) -> Any:
    return _rows(database, "SELECT * FROM users WHERE id = :id", id=user_id)[0]


def _outbox(template: str) -> list[tuple[str, str, dict[str, Any]]]:
    with unit_of_work() as uow:
        ids = uow.session.execute(sa.text("SELECT id FROM outbox ORDER BY id")).scalars().all()
        return [m for m in (read(uow.session, i) for i in ids) if m[0] == template]


def _history(make: Any, clock: Any) -> tuple[Any, Any, list[int]]:
    """Alice with credit and three transactions: 40, 10 and 1 day(s) ago; returns (alice, bob, tx ids)."""
    start = clock.now()
    alice = make.account("alice@example.com")
    bob = make.account("bob@example.com")
    clock.set(start - timedelta(days=40))
    ledger.grant(alice.wallet.id, 50 * USD, "purchase")
    clock.set(start - timedelta(days=10))
    ledger.transfer(alice.wallet.id, "bob@example.com", 5 * USD)
    clock.set(start - timedelta(days=1))
    ledger.transfer(alice.wallet.id, "bob@example.com", 7 * USD)
    clock.set(start)
    return alice, bob, ledger.transactions_of(alice.wallet.id)


# ---------------------------------------------------------------- P104


def test_P104_compromise_report_from_settings(client, make, clock, database):
    alice, _bob, (old_tx, tx_10d, tx_1d) = _history(make, clock)
    other_web = _session(alice.user_id)
    api_token = _session(alice.user_id, kind="api")
    csrf = _as(client, alice.user_id)
    since = (clock.now() - timedelta(days=20)).isoformat()

    r = client.post("/api/v1/me/security/compromised", json={"since": since, "description": "phished"},
                    headers={**csrf, "X-Request-Id": "req-p104-settings"})

    assert r.status_code == 201, r.json
    assert REFERENCE.match(r.json["reference"]) and r.json["kind"] == "compromise"
    assert r.json["froze_money"] is True and r.json["tx_ids"] == [tx_10d, tx_1d]  # not the 40-day-old grant
    # Every session and API token revoked, this one included; the browser is told to drop its cookie.
    assert all(row.revoked_at is not None for row in _rows(database, "SELECT revoked_at FROM sessions"))
    assert SESSION_COOKIE in r.headers.get("Set-Cookie", "")
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {api_token.token}"}).status_code == 401
    client.set_cookie(SESSION_COOKIE, other_web.token)
    assert client.get("/api/v1/me").status_code == 401
    # Money movement frozen, a new password required.
    user = _user(database, alice.user_id)
    assert user.money_frozen_at is not None and r.json["reference"] in user.money_frozen_reason
    assert bool(user.reset_required) is True
    with pytest.raises(MoneyFrozen):
        ledger.transfer(alice.wallet.id, "bob@example.com", 1 * USD)
    # Linked for support, logged, notified.
    linked = _rows(database, "SELECT tx_id FROM security_report_entries ORDER BY tx_id")
    assert [row.tx_id for row in linked] == [tx_10d, tx_1d] and old_tx not in [row.tx_id for row in linked]
    [event] = _rows(database, "SELECT * FROM security_events WHERE kind = 'compromise_reported'")
    assert event.user_id == alice.user_id and event.ip_prefix == "127.0.0.0/24"
    assert f"reference={r.json['reference']}" in event.detail and "request=req-p104-settings" in event.detail
    assert "outcome=ok" in event.detail and "sessions_revoked=3" in event.detail
    [entry] = _rows(database, "SELECT * FROM audit_log WHERE action = 'security.compromise_reported'")
    assert entry.actor == f"user:{alice.user_id}" and r.json["reference"] in entry.detail
    assert audit.verify().ok
    [(_, to, context)] = _outbox("compromise_report")
    assert to == "alice@example.com" and context["reference"] == r.json["reference"]
    # The description is stored encrypted.
    [report] = _rows(database, "SELECT description_enc FROM security_reports")
    assert "phished" not in report.description_enc


def test_P104_calls_go_on_while_money_is_frozen(client, make, database):
    from credits.accounts import apikeys
    from credits.rating import service as rating
    from credits.rating.engine import Rate

    rating.import_plan("default", [Rate("65", "Singapore", 12_300, 0, 60, 6)], "USD")
    key = apikeys.create_key("switch-1", "switch")
    alice = accounts.create_account("alice@example.com", "correct horse battery", phone="+6591234567")
    ledger.grant(alice.wallet.id, 10 * USD, "purchase")
    csrf = _as(client, alice.user_id)
    assert client.post("/api/v1/me/security/compromised", json={}, headers=csrf).status_code == 201
    r = client.post("/api/v1/calls/authorize", headers={"Authorization": f"Bearer {key.secret}"},
                    json={"call_id": "c-1", "caller": "+6591234567", "callee": "+6561234567"})
    assert r.status_code == 200 and r.json["authorized"] is True


def test_P104_compromise_report_signed_out_from_the_link_of_a_security_email(client, make, smtp, database):
    alice = make.account("alice@example.com")
    _session(alice.user_id)
    with unit_of_work() as uow:
        notices.security_notice(uow.session, alice.user_id, "new_sign_in", ip_prefix="198.51.100.0/24",
                                user_agent="Unknown browser", kind="web")
        uow.commit()
    delivery.deliver_due()
    [notice] = smtp.wait_for(1)
    url = LINK.search(body_text(notice)).group()
    path = url.removeprefix("https://credits.example.net")

    page = client.get(path)  # signed out: no cookie at all
    assert page.status_code == 200 and "Lock my account" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    token = url.rpartition("token=")[2]
    done = client.post("/security/compromised", data={"token": token, "since": "", "description": "not me"})
    assert done.status_code == 200, done.text
    reference = re.search(r'id="reference">(SR-[0-9A-Z-]+)<', done.text).group(1)

    user = _user(database, alice.user_id)
    assert user.money_frozen_at is not None and bool(user.reset_required)
    assert all(row.revoked_at is not None for row in _rows(database, "SELECT revoked_at FROM sessions"))
    [event] = _rows(database, "SELECT detail FROM security_events WHERE kind = 'compromise_reported'")
    assert "via=link" in event.detail
    # The acknowledgement arrives by email too.
    delivery.deliver_due()
    ack = smtp.wait_for(2)[-1]
    assert reference in ack["Subject"] and reference in body_text(ack)
    # Single use: the same link does not work twice.
    again = client.post("/security/compromised", data={"token": token})
    assert again.status_code == 400 and "not valid" in again.text
    assert client.get(path).status_code == 400


def test_P104_compromise_report_signed_out_through_the_api(client, make, database):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        notices.security_notice(uow.session, alice.user_id, "password_changed", how="change")
        uow.commit()
    [(_, _, context)] = _outbox("password_changed")
    token = context["wasnt_me_url"].rpartition("token=")[2]
    r = client.post("/api/v1/security/compromised", json={"token": token})
    assert r.status_code == 201 and REFERENCE.match(r.json["reference"])
    assert _user(database, alice.user_id).money_frozen_at is not None
    replay = client.post("/api/v1/security/compromised", json={"token": token})
    assert replay.status_code == 400 and replay.json["code"] == "invalid_link"


def test_P104_expired_link_is_refused(client, make, clock, database):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        notices.security_notice(uow.session, alice.user_id, "password_changed", how="change")
        uow.commit()
    token = _outbox("password_changed")[0][2]["wasnt_me_url"].rpartition("token=")[2]
    clock.advance(days=31)
    before = table_snapshot(database)
    r = client.post("/api/v1/security/compromised", json={"token": token})
    assert r.status_code == 400 and r.json["code"] == "invalid_link"
    assert table_snapshot(database) == before


def test_P104_compromise_report_cancels_pending_email_links(make, database):
    from credits.security import service

    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        for purpose in ("reset_password", "change_email", "verify_email"):
            uow.session.execute(sa.text(
                "INSERT INTO email_tokens (user_id, purpose, token_hash, created_at, expires_at) "
                "VALUES (:u, :p, :h, :now, :exp)"),
                {"u": alice.user_id, "p": purpose, "h": purpose.ljust(64, "0"),
                 "now": "2026-11-22 11:00:00", "exp": "2026-11-23 11:00:00"})
        uow.commit()
    service.report_compromise(alice.user_id)
    used = {r.purpose: r.used_at for r in _rows(database, "SELECT purpose, used_at FROM email_tokens")}
    assert used["reset_password"] is not None and used["change_email"] is not None
    assert used["verify_email"] is None


@pytest.mark.parametrize("body", [
    {"since": "2030-01-01T00:00:00Z"},          # in the future
    {"since": "2020-01-01T00:00:00Z"},          # more than 400 days back
    {"since": "2026-11-01T00:00:00"},           # no timezone
    {"since": "yesterday"},
    {"description": "x" * 2001},
    {"description": "bell\x07"},
    {"unexpected": 1},
    [],
])
def test_P104_bad_input_changes_nothing(body, client, make, database):
    alice = make.account("alice@example.com")
    csrf = _as(client, alice.user_id)
    before = table_snapshot(database)
    r = client.post("/api/v1/me/security/compromised", json=body, headers=csrf)
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert table_snapshot(database) == before


def test_P104_bad_link_input_changes_nothing_and_keeps_the_token(client, make, database):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        notices.security_notice(uow.session, alice.user_id, "password_changed", how="change")
        uow.commit()
    token = _outbox("password_changed")[0][2]["wasnt_me_url"].rpartition("token=")[2]
    before = table_snapshot(database)
    for body in ({"token": token, "since": "2030-01-01T00:00:00Z"}, {"token": "x" * 43},
                 {"token": token, "extra": True}, {}):
        r = client.post("/api/v1/security/compromised", json=body)
        assert r.status_code == 400, body
        assert table_snapshot(database) == before
    form = client.post("/security/compromised", data={"token": token, "since": "not-a-date"})
    assert form.status_code == 400 and "YYYY-MM-DD" in form.text
    assert table_snapshot(database) == before
    assert client.post("/api/v1/security/compromised", json={"token": token}).status_code == 201  # still usable


def test_P104_needs_a_session_or_a_link(client, make, database):
    make.account("alice@example.com")
    before = table_snapshot(database)
    assert client.post("/api/v1/me/security/compromised", json={}).status_code == 401
    alice_csrf_missing = _session(1)
    client.set_cookie(SESSION_COOKIE, alice_csrf_missing.token)
    assert client.post("/api/v1/me/security/compromised", json={}).status_code == 400  # CSRF token missing
    assert {k: v for k, v in table_snapshot(database).items() if k != "sessions"} == \
        {k: v for k, v in before.items() if k != "sessions"}


# ---------------------------------------------------------------- P105


def test_P105_unauthorized_transaction_report_with_freeze(client, make, clock, database):
    alice, _bob, (_grant, tx_10d, tx_1d) = _history(make, clock)
    csrf = _as(client, alice.user_id)
    r = client.post("/api/v1/me/security/unauthorized-transactions", headers=csrf,
                    json={"tx_ids": [tx_1d], "description": "I never sent 7.00 to bob", "freeze": True})
    assert r.status_code == 201, r.json
    assert REFERENCE.match(r.json["reference"]) and r.json["kind"] == "unauthorized_transactions"
    assert r.json["tx_ids"] == [tx_1d] and r.json["froze_money"] is True and r.json["status"] == "open"
    assert r.json["answer_by"] == (clock.now() + timedelta(days=15)).isoformat().replace("+00:00", "Z")
    user = _user(database, alice.user_id)
    assert user.money_frozen_at is not None and not bool(user.reset_required)  # a freeze, not a lock-out
    with pytest.raises(MoneyFrozen):
        ledger.transfer(alice.wallet.id, "bob@example.com", 1 * USD)
    assert client.get("/api/v1/me").status_code == 200  # still signed in
    [(_, to, context)] = _outbox("unauthorized_transaction_report")
    assert to == "alice@example.com" and context["reference"] == r.json["reference"]
    assert context["entries"] == 1 and context["froze_money"] is True
    [event] = _rows(database, "SELECT detail FROM security_events WHERE kind = 'unauthorized_transactions_reported'")
    assert "freeze=True" in event.detail
    mine = client.get("/api/v1/me/security/reports")
    assert [x["reference"] for x in mine.json["reports"]] == [r.json["reference"]]
    assert mine.json["reports"][0]["description"] == "I never sent 7.00 to bob"


def test_P105_report_since_links_everything_since_and_without_freeze_money_moves(client, make, clock, database):
    alice, _bob, (_grant, tx_10d, tx_1d) = _history(make, clock)
    csrf = _as(client, alice.user_id)
    since = (clock.now() - timedelta(days=12)).isoformat()
    r = client.post("/api/v1/me/security/unauthorized-transactions", headers=csrf,
                    json={"since": since, "description": "two transfers I do not know"})
    assert r.status_code == 201 and r.json["tx_ids"] == [tx_10d, tx_1d] and r.json["froze_money"] is False
    assert _user(database, alice.user_id).money_frozen_at is None
    ledger.transfer(alice.wallet.id, "bob@example.com", 1 * USD)


@pytest.mark.parametrize("body", [
    {"description": "no transactions named"},                       # neither since nor tx_ids
    {"tx_ids": [1], "description": ""},
    {"tx_ids": ["1"], "description": "strings are not ids"},
    {"tx_ids": [1.5], "description": "floats neither"},
    {"tx_ids": list(range(1, 102)), "description": "too many"},
    {"tx_ids": [1], "description": "x", "freeze": "yes"},
    {"tx_ids": [1], "description": "x", "since": "2030-01-01T00:00:00Z"},
    {"tx_ids": [1], "description": "x", "unknown": 1},
])
def test_P105_bad_input_changes_nothing(body, client, make, clock, database):
    alice, _bob, _txs = _history(make, clock)
    csrf = _as(client, alice.user_id)
    before = table_snapshot(database)
    r = client.post("/api/v1/me/security/unauthorized-transactions", json=body, headers=csrf)
    assert r.status_code == 400, r.json
    assert table_snapshot(database) == before


def test_P105_someone_elses_transaction_is_refused_and_changes_nothing(client, make, clock, database):
    alice, _bob, _txs = _history(make, clock)
    carol = make.account("carol@example.com", credit=3 * USD)
    [carols_tx] = ledger.transactions_of(carol.wallet.id)
    csrf = _as(client, alice.user_id)
    before = table_snapshot(database)
    for ids in ([carols_tx], [999_999]):
        r = client.post("/api/v1/me/security/unauthorized-transactions", headers=csrf,
                        json={"tx_ids": ids, "description": "not mine", "freeze": True})
        assert r.status_code == 400 and r.json["field"] == "tx_ids"
        assert r.json["detail"] == f"not transactions of your account: {ids[0]}"  # same answer either way
    assert table_snapshot(database) == before


# ---------------------------------------------------------------- staff: queue, read, resolve, unfreeze


def test_P105_reports_are_listed_in_the_support_queue(client, make, clock, database):
    from credits.security import service

    alice, _bob, (_g, _t1, tx_1d) = _history(make, clock)
    first = service.report_unauthorized(alice.user_id, description="secret detail", tx_ids=[tx_1d])
    clock.advance(hours=1)
    second = service.report_compromise(alice.user_id)
    staff, csrf = _staff(make, client)

    r = client.get("/api/v1/staff/security-reports")
    assert r.status_code == 200, r.json
    assert [x["reference"] for x in r.json["reports"]] == [first.reference, second.reference]  # oldest first
    row = r.json["reports"][0]
    assert row["user_id"] == alice.user_id and row["account_number"] == alice.wallet.account_number
    assert row["description"] is None and row["tx_ids"] == [tx_1d]  # descriptions only when opened
    only = client.get("/api/v1/staff/security-reports?kind=compromise&limit=1")
    assert [x["reference"] for x in only.json["reports"]] == [second.reference] and only.json["next_cursor"] is None

    detail = client.get(f"/api/v1/staff/security-reports/{first.reference}")
    assert detail.status_code == 200 and detail.json["description"] == "secret detail"
    [read_entry] = _rows(database, "SELECT * FROM audit_log WHERE action = 'security.report_read'")
    assert read_entry.actor == f"user:{staff.user_id}" and first.reference in read_entry.detail

    done = client.post(f"/api/v1/staff/security-reports/{first.reference}/resolve", headers=csrf,
                       json={"resolution": "refunded the transfer"})
    assert done.status_code == 200 and done.json["status"] == "resolved"
    assert client.post(f"/api/v1/staff/security-reports/{first.reference}/resolve", headers=csrf,
                       json={"resolution": "again"}).status_code == 409
    open_now = client.get("/api/v1/staff/security-reports")
    assert [x["reference"] for x in open_now.json["reports"]] == [second.reference]
    assert client.get("/api/v1/staff/security-reports/SR-NONE-XXXX").status_code == 404


def test_staff_unfreezes_with_a_reason_audit_logged(client, make, database):
    from credits.security import service

    alice = make.account("alice@example.com", credit=10 * USD)
    make.account("bob@example.com")
    service.report_compromise(alice.user_id)
    staff, csrf = _staff(make, client, role="security_officer")

    r = client.post(f"/api/v1/staff/accounts/{alice.user_id}/unfreeze", headers=csrf,
                    json={"reason": "customer verified by phone, new password set"})
    assert r.status_code == 200, r.json
    assert r.json["user_id"] == alice.user_id and r.json["frozen_reason"].startswith("compromise report SR-")
    user = _user(database, alice.user_id)
    assert user.money_frozen_at is None and user.money_frozen_reason is None
    assert bool(user.reset_required)  # unfreezing does not waive the new password
    ledger.transfer(alice.wallet.id, "bob@example.com", 1 * USD)  # money moves again
    [entry] = _rows(database, "SELECT * FROM audit_log WHERE action = 'account.unfreeze'")
    assert entry.actor == f"user:{staff.user_id}" and entry.subject == f"user:{alice.user_id}"
    assert "customer verified by phone" in entry.detail
    assert audit.verify().ok
    [event] = _rows(database, "SELECT detail FROM security_events WHERE kind = 'money_unfrozen'")
    assert f"by=user:{staff.user_id}" in event.detail
    again = client.post(f"/api/v1/staff/accounts/{alice.user_id}/unfreeze", headers=csrf, json={"reason": "x"})
    assert again.status_code == 409


def test_unfreeze_bad_input_and_permissions_change_nothing(client, make, database):
    from credits.security import service

    alice = make.account("alice@example.com")
    service.report_compromise(alice.user_id)
    path = f"/api/v1/staff/accounts/{alice.user_id}/unfreeze"
    support = make.account("support9@example.com", role="support")
    customer = make.account("eve@example.com")
    support_without_mfa = make.account("support8@example.com", role="support")
    csrf = _as(client, support.user_id)
    before = {k: v for k, v in table_snapshot(database).items() if k != "sessions"}

    def unchanged() -> bool:
        return {k: v for k, v in table_snapshot(database).items() if k != "sessions"} == before

    for body in ({}, {"reason": ""}, {"reason": "x" * 501}, {"reason": "ok", "extra": 1}):
        assert client.post(path, headers=csrf, json=body).status_code == 400
    assert client.post("/api/v1/staff/accounts/999999/unfreeze", headers=csrf, json={"reason": "x"}).status_code == 404
    assert unchanged()
    customer_csrf = _as(client, customer.user_id)
    assert client.post(path, headers=customer_csrf, json={"reason": "let me"}).status_code == 403
    assert client.get("/api/v1/staff/security-reports").status_code == 403
    no_mfa = _as(client, support_without_mfa.user_id, mfa_ok=False)
    assert client.post(path, headers=no_mfa, json={"reason": "x"}).status_code == 403
    assert unchanged()


def test_money_frozen_check_for_payments(make, database):
    from credits.security import service

    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        service.check_money_movement(uow.session, alice.user_id)  # not frozen: nothing raised
    service.report_compromise(alice.user_id)
    with unit_of_work() as uow:
        with pytest.raises(MoneyFrozen) as raised:
            service.check_money_movement(uow.session, alice.user_id)
    assert raised.value.status == 403 and raised.value.code == "money_frozen"
