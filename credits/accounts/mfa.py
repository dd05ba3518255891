"""TOTP second factor: enrolment (confirmed by a code), verification with a replay guard, recovery codes.

CHECKLIST J68-J70. The seed is 160 bits from the OS CSPRNG (pyotp.random_base32), stored encrypted
(users.mfa_secret_enc); it is active only once `mfa_enabled_at` is set, after the user has typed a valid code.
A code is accepted once: the accepted 30-second step is kept in users.mfa_last_step and only a later step passes
(pyotp's own verify() would take the same code twice). Recovery codes: 10, 120 bits each, stored as SHA-256,
each usable once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import pyotp
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session as DbSession

from credits import clock, config, crypto
from credits.accounts import notices, sessions
from credits.accounts.models import STAFF_ROLES, RecoveryCode, User
from credits.accounts.passwords import verify_password
from credits.db import unit_of_work
from credits.errors import Conflict, DomainError, Forbidden, NotFound
from credits.security import events

U: Table = User.__table__  # type: ignore[assignment]
R: Table = RecoveryCode.__table__  # type: ignore[assignment]

ISSUER = "Credits"
RECOVERY_CODES = 10
SEED_CHARS = 32  # base32: 5 bits each, 160 bits


class SecondFactorInvalid(DomainError):
    """The one-time code (or recovery code) is wrong, already used, or from another time step."""

    status = 401
    code = "mfa_invalid"
    title = "The code is not valid"


class PasswordInvalid(DomainError):
    """Re-authentication failed: the current password is wrong (the session itself is still fine: 403, not 401)."""

    status = 403
    code = "reauthentication_failed"
    title = "The current password is incorrect"


@dataclass(frozen=True)
class Enrolment:
    """A pending TOTP enrolment: what the authenticator app needs. Shown once; the seed is stored encrypted."""

    secret: str
    otpauth_uri: str
    qr_svg: str  # data: URI of an SVG image of the otpauth URI


@dataclass(frozen=True)
class Activation:
    recovery_codes: list[str]
    session: sessions.NewSession | None


def _secret(row: Any, user_id: int) -> str | None:
    return crypto.decrypt(row.mfa_secret_enc, "users", "mfa_secret_enc", user_id)


def _step_ok(db: DbSession, user_id: int, secret: str, code: str, last_step: int | None) -> bool:
    """Accept `code` for the current step (or +-1 when configured) newer than `last_step`; record the step."""
    code = "".join(code.split())
    if len(code) != 6 or not code.isdigit():
        return False
    totp = pyotp.TOTP(secret)
    now_step = totp.timecode(clock.now())
    window = config.current().totp_valid_window
    for step in range(now_step - window, now_step + window + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            # Conditional write: two requests racing with the same code cannot both pass.
            done = db.execute(update(U).where(U.c.id == user_id, (U.c.mfa_last_step.is_(None))
                                              | (U.c.mfa_last_step < step)).values(mfa_last_step=step))
            return bool(done.rowcount)  # type: ignore[attr-defined]
    return False


def _code_hash(code: str) -> str:
    normal = "".join(ch for ch in code.lower() if ch.isalnum())
    return hashlib.sha256(normal.encode()).hexdigest()


def _use_recovery_code(db: DbSession, user_id: int, code: str) -> bool:
    if not 16 <= len(code) <= 64:
        return False
    done = db.execute(update(R).where(R.c.user_id == user_id, R.c.code_hash == _code_hash(code),
                                      R.c.used_at.is_(None)).values(used_at=clock.now()))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def verify_second_factor(db: DbSession, user: Any, code: str | None) -> str | None:
    """Check a TOTP code or a recovery code for `user` (a users row) in the caller's transaction.

    Returns "totp" or "recovery" when accepted (and records the step / uses up the code), None otherwise.
    """
    if not code or not isinstance(code, str) or getattr(user, "mfa_enabled_at", None) is None:
        return None
    user_id = int(user.id)
    secret = _secret(user, user_id)
    if secret and _step_ok(db, user_id, secret, code, getattr(user, "mfa_last_step", None)):
        return "totp"
    if _use_recovery_code(db, user_id, code):
        return "recovery"
    return None


def _new_recovery_codes(db: DbSession, user_id: int) -> list[str]:
    db.execute(delete(R).where(R.c.user_id == user_id))
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(secrets.token_bytes(15)).decode().lower()  # 120 bits, 24 characters
        code = "-".join(raw[i : i + 6] for i in range(0, 24, 6))
        codes.append(code)
        db.execute(insert(R).values(user_id=user_id, code_hash=_code_hash(code)))
    return codes


def _user(db: DbSession, user_id: int, *, lock: bool = False) -> Any:
    query = select(U).where(U.c.id == user_id)
    if lock:
        query = query.with_for_update()
    row = db.execute(query).first()
    if row is None:
        raise NotFound("no such account")
    return row


def provisioning(secret: str, account_name: str) -> tuple[str, str]:
    """The otpauth:// URI for an authenticator app and an SVG QR code of it (as a data: URI)."""
    import segno

    uri = pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=ISSUER)
    return uri, segno.make(uri, error="m").svg_data_uri(scale=4)


def start_enrolment(user_id: int, password: str) -> Enrolment:
    """Create a new TOTP seed for `user_id` (after checking their password); pending until confirmed.

    Raises PasswordInvalid, Conflict (TOTP already active: disable it first), NotFound.
    """
    secret = pyotp.random_base32(length=SEED_CHARS)
    with unit_of_work() as uow:
        user = _user(uow.session, user_id, lock=True)
        if not verify_password(user.password_hash, password):
            raise PasswordInvalid()
        if user.mfa_enabled_at is not None:
            raise Conflict("two-factor authentication is already on; turn it off first to enrol a new device")
        uow.session.execute(update(U).where(U.c.id == user_id).values(
            mfa_secret_enc=crypto.encrypt(secret, "users", "mfa_secret_enc", user_id), mfa_last_step=None))
        email = crypto.decrypt(user.email_enc, "users", "email_enc", user_id) or str(user_id)
        uow.commit()
    uri, qr = provisioning(secret, email)
    return Enrolment(secret, uri, qr)


def confirm_enrolment(user_id: int, code: str, *, session_id: int | None = None, session_kind: str = "web",
                      ip: str | None = None, user_agent: str | None = None) -> Activation:
    """Activate the pending seed once `code` is valid for it; return 10 fresh recovery codes (shown once).

    When called from a session, that session is replaced by a new one with the second factor passed (a new id
    on privilege change, K76). Raises Conflict (nothing pending, or already active), SecondFactorInvalid.
    """
    with unit_of_work() as uow:
        db = uow.session
        user = _user(db, user_id, lock=True)
        if user.mfa_enabled_at is not None:
            raise Conflict("two-factor authentication is already on")
        secret = _secret(user, user_id)
        if not secret:
            raise Conflict("start the set-up first")
        if not _step_ok(db, user_id, secret, code or "", getattr(user, "mfa_last_step", None)):
            events.record(db, "mfa_enrol_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise SecondFactorInvalid()
        db.execute(update(U).where(U.c.id == user_id).values(mfa_enabled_at=clock.now()))
        codes = _new_recovery_codes(db, user_id)
        new = None
        if session_id is not None:
            sessions.revoke_in(db, session_id)
            new = sessions.create(db, user_id, kind=session_kind, mfa_ok=True, ip=ip, user_agent=user_agent)
        events.record(db, "mfa_enabled", user_id=user_id, ip=ip)
        notices.security_notice(db, user_id, "mfa_changed", change="enabled")
        uow.commit()
        return Activation(codes, new)


def disable(user_id: int, password: str, code: str, *, ip: str | None = None) -> None:
    """Turn TOTP off after the password and a current code (or recovery code); recovery codes are deleted.

    Staff may not turn it off (MFA is mandatory for them). Raises PasswordInvalid, SecondFactorInvalid,
    Forbidden, Conflict (not on).
    """
    with unit_of_work() as uow:
        db = uow.session
        user = _user(db, user_id, lock=True)
        if user.role in STAFF_ROLES:
            raise Forbidden("two-factor authentication is mandatory for staff accounts")
        if user.mfa_enabled_at is None:
            raise Conflict("two-factor authentication is not on")
        if not verify_password(user.password_hash, password):
            raise PasswordInvalid()
        if verify_second_factor(db, user, code) is None:
            events.record(db, "mfa_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise SecondFactorInvalid()
        db.execute(update(U).where(U.c.id == user_id).values(mfa_enabled_at=None, mfa_secret_enc=None,
                                                            mfa_last_step=None))
        db.execute(delete(R).where(R.c.user_id == user_id))
        events.record(db, "mfa_disabled", user_id=user_id, ip=ip)
        notices.security_notice(db, user_id, "mfa_changed", change="disabled")
        uow.commit()


def regenerate_recovery_codes(user_id: int, code: str, *, ip: str | None = None) -> list[str]:
    """Replace the recovery codes (the old ones stop working) after a current TOTP code; return the new ones.

    Raises Conflict (TOTP not on), SecondFactorInvalid.
    """
    with unit_of_work() as uow:
        db = uow.session
        user = _user(db, user_id, lock=True)
        if user.mfa_enabled_at is None:
            raise Conflict("two-factor authentication is not on")
        if verify_second_factor(db, user, code) != "totp":
            events.record(db, "mfa_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise SecondFactorInvalid()
        codes = _new_recovery_codes(db, user_id)
        events.record(db, "recovery_codes_regenerated", user_id=user_id, ip=ip)
        notices.security_notice(db, user_id, "mfa_changed", change="recovery_codes_regenerated")
        uow.commit()
        return codes


def recovery_codes_left(user_id: int) -> int:
    with unit_of_work() as uow:
        rows = uow.session.execute(select(R.c.id).where(R.c.user_id == user_id, R.c.used_at.is_(None))).all()
        return len(rows)
