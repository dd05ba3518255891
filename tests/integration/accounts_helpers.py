"""Helpers for the account API tests: sign-up, sign-in, TOTP codes off the frozen clock, the outbox."""

from __future__ import annotations

from typing import Any

import pyotp
import sqlalchemy as sa

from credits import clock
from credits.db import unit_of_work
from credits.notify.models import OutboxMessage
from credits.notify.outbox import read
from credits.web.auth import SESSION_COOKIE

PASSWORD = "violet staple engine 42"
ADULT = {"name": "Ada Lovelace", "date_of_birth": "1990-04-21", "country": "SG"}


def register(client: Any, email: str = "ada@example.com", password: str = PASSWORD, **fields: Any) -> Any:
    body = {"email": email, "password": password, **ADULT, **fields}
    return client.post("/api/v1/auth/register", json=body)


def outbox(template: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(template, recipient, context) of every queued message, oldest first."""
    t = OutboxMessage.__table__
    with unit_of_work() as uow:
        ids = uow.session.execute(sa.select(t.c.id).order_by(t.c.id)).scalars().all()
        messages = [read(uow.session, i) for i in ids]
    return [m for m in messages if template is None or m[0] == template]


def verify_latest(client: Any, to: str | None = None) -> Any:
    token = [m for m in outbox("verify_email") if to is None or m[1] == to][-1][2]["token"]
    return client.post("/api/v1/auth/verify-email", json={"token": token})


def login(client: Any, email: str = "ada@example.com", password: str = PASSWORD, **extra: Any) -> Any:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password, **extra})


def signed_in(client: Any, email: str = "ada@example.com", password: str = PASSWORD) -> dict[str, str]:
    """Register (if needed) and sign in; return the headers an unsafe cookie request needs."""
    register(client, email, password)
    r = login(client, email, password)
    assert r.status_code == 200, r.json
    return {"X-CSRF-Token": r.json["csrf_token"]}


def cookie(client: Any) -> str | None:
    c = client.get_cookie(SESSION_COOKIE)
    return c.value if c else None


def totp_now(secret: str, offset_steps: int = 0) -> str:
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(clock.now()) + offset_steps)


def enrol_totp(client: Any, csrf: dict[str, str], password: str = PASSWORD) -> tuple[str, list[str], dict[str, str]]:
    """Turn TOTP on for the signed-in user; return (secret, recovery codes, new CSRF headers)."""
    r = client.post("/api/v1/me/mfa/totp", json={"password": password}, headers=csrf)
    assert r.status_code == 201, r.json
    secret = r.json["secret"]
    r = client.post("/api/v1/me/mfa/totp/confirm", json={"code": totp_now(secret)}, headers=csrf)
    assert r.status_code == 200, r.json
    return secret, r.json["recovery_codes"], {"X-CSRF-Token": r.json["csrf_token"]}


STAFF_PASSWORD = "correct horse battery"  # tests.conftest.Factory's password


def staff_client(app: Any, make: Any, role: str = "support") -> tuple[Any, dict[str, str]]:
    """A test client signed in as a new staff member of `role` who has passed TOTP; (client, CSRF headers)."""
    make.account(f"{role}@example.com", role=role)
    staff = app.test_client()
    r = login(staff, f"{role}@example.com", STAFF_PASSWORD)
    _secret, _codes, csrf = enrol_totp(staff, {"X-CSRF-Token": r.json["csrf_token"]}, password=STAFF_PASSWORD)
    return staff, csrf
