"""Signing in and out: password (+ TOTP) login, personal API tokens, the MFA step, password reset and change.

CHECKLIST J64-J67, J71-J73, K76, K77. An unknown email and a wrong password give the same error, after the same
work (a dummy hash is verified for unknown users). Throttling lives in the web layer (credits.web.limits).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session as DbSession

from credits import clock, config
from credits.accounts import mfa, notices, sessions
from credits.accounts.models import EmailToken, Session, User
from credits.accounts.passwords import check_policy, hash_password, needs_rehash, verify_dummy, verify_password
from credits.accounts.service import email_index
from credits.db import UnitOfWork, unit_of_work
from credits.errors import DomainError, ValidationError
from credits.security import events

U: Table = User.__table__  # type: ignore[assignment]
T: Table = EmailToken.__table__  # type: ignore[assignment]
S: Table = Session.__table__  # type: ignore[assignment]


class InvalidCredentials(DomainError):
    """Email or password wrong: one answer whether or not the account exists (J65)."""

    status = 401
    code = "invalid_credentials"
    title = "Email or password is incorrect"


class SecondFactorRequired(DomainError):
    """The account has two-factor authentication: give the current code (`totp`) too."""

    status = 401
    code = "mfa_required"
    title = "Second factor required"


class PasswordResetRequired(DomainError):
    """The password must be reset first (after a compromise report): use "forgot password"."""

    status = 403
    code = "password_reset_required"
    title = "Password reset required"


class InvalidToken(DomainError):
    """The link is unknown, used, expired or replaced by a newer one."""

    status = 400
    code = "invalid_token"
    title = "This link is invalid or has expired"


@dataclass(frozen=True)
class LoginResult:
    user_id: int
    role: str
    session: sessions.NewSession
    #: True when the session still owes its second factor (POST /api/v1/auth/mfa).
    mfa_required: bool


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _find_user(db: DbSession, email: object) -> Any:
    try:
        index = email_index(email)  # type: ignore[arg-type]
    except ValidationError:
        return None
    return db.execute(select(U).where(U.c.email_bidx == index)).first()


def _check_password(uow: UnitOfWork, email: object, password: object, ip: str | None) -> Any:
    """The users row when email and password match a usable account; InvalidCredentials otherwise.

    Both failures do the same work (a hash verification, one security event committed), so neither the answer
    nor its timing says whether the account exists (J65).
    """
    db = uow.session
    if not isinstance(password, str) or not password or len(password) > 1024:
        raise InvalidCredentials()
    user = _find_user(db, email)
    if user is None or user.status == "closed":
        verify_dummy(password)
        ok = False
    else:
        ok = verify_password(user.password_hash, password)
    if not ok:
        events.record(db, "login_failed", user_id=None if user is None else user.id, ip=ip)
        uow.commit()
        raise InvalidCredentials()
    if needs_rehash(user.password_hash):
        db.execute(update(U).where(U.c.id == user.id).values(password_hash=hash_password(password)))
    return user


def _new_device(db: DbSession, user_id: int, ip: str | None, user_agent: str | None,
                exclude: int | None = None) -> bool:
    """True when the user has signed in before, but never from this network and browser."""
    query = select(S.c.ip_prefix, S.c.user_agent).where(S.c.user_id == user_id)
    if exclude is not None:
        query = query.where(S.c.id != exclude)
    seen = {(row.ip_prefix, row.user_agent) for row in db.execute(query.limit(1000)).all()}
    return bool(seen) and (events.ip_prefix(ip), (user_agent or "")[:200] or None) not in seen


def _signed_in(db: DbSession, user_id: int, kind: str, ip: str | None, user_agent: str | None,
               new_device: bool) -> None:
    """Bookkeeping of a complete sign-in: last login, event, and a notice from a device not seen before."""
    if new_device:
        notices.security_notice(db, user_id, "new_sign_in", ip_prefix=events.ip_prefix(ip) or "unknown",
                                user_agent=(user_agent or "unknown")[:200], kind=kind)
    db.execute(update(U).where(U.c.id == user_id).values(last_login_at=clock.now()))
    events.record(db, "login", user_id=user_id, ip=ip, detail=kind)


def login(email: str, password: str, *, totp: str | None = None, kind: str = "web", ip: str | None = None,
          user_agent: str | None = None, previous_token: str | None = None) -> LoginResult:
    """Check email and password (and `totp` when given) and open a session of `kind` with a new random id.

    The session that `previous_token` names (a pre-login cookie) is revoked (K76). For an account with TOTP on:
    without `totp`, a web session opens that still owes the second factor (complete it with `complete_mfa`),
    while an API token is refused with SecondFactorRequired; a wrong code raises mfa.SecondFactorInvalid.
    Staff without TOTP get a session that passes no staff route until they enrol (J71).
    Raises InvalidCredentials (unknown email, wrong password, closed account: same message and work),
    PasswordResetRequired (after a compromise report).
    """
    with unit_of_work() as uow:
        db = uow.session
        user = _check_password(uow, email, password, ip)
        if user.reset_required:
            events.record(db, "login_refused_reset_required", user_id=user.id, ip=ip)
            uow.commit()
            raise PasswordResetRequired()
        mfa_on = user.mfa_enabled_at is not None
        mfa_ok = False
        if mfa_on and totp:
            method = mfa.verify_second_factor(db, user, totp)
            if method is None:
                events.record(db, "mfa_failed", user_id=user.id, ip=ip)
                uow.commit()
                raise mfa.SecondFactorInvalid()
            mfa_ok = True
            if method == "recovery":
                events.record(db, "recovery_code_used", user_id=user.id, ip=ip)
        elif mfa_on and kind == "api":
            raise SecondFactorRequired()
        previous = sessions.find(db, previous_token) if previous_token else None
        if previous is not None:
            sessions.revoke_in(db, previous.id)
        new_device = _new_device(db, user.id, ip, user_agent)
        new = sessions.create(db, user.id, kind=kind, mfa_ok=mfa_ok, ip=ip, user_agent=user_agent)
        pending = mfa_on and not mfa_ok
        if pending:
            events.record(db, "login_password_ok", user_id=user.id, ip=ip, detail=kind)
        else:
            _signed_in(db, user.id, kind, ip, user_agent, new_device)
        uow.commit()
        return LoginResult(user.id, user.role, new, pending)


def complete_mfa(session_id: int, user_id: int, code: str, *, ip: str | None = None,
                 user_agent: str | None = None) -> sessions.NewSession:
    """Pass the second factor of session `session_id`: it is replaced by a new session with mfa_ok (K76).

    Raises mfa.SecondFactorInvalid (wrong, replayed or used code; recorded as a security event).
    """
    with unit_of_work() as uow:
        db = uow.session
        user = db.execute(select(U).where(U.c.id == user_id).with_for_update()).one()
        method = mfa.verify_second_factor(db, user, code)
        if method is None:
            events.record(db, "mfa_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise mfa.SecondFactorInvalid()
        if method == "recovery":
            events.record(db, "recovery_code_used", user_id=user_id, ip=ip)
        kind = db.execute(select(S.c.kind).where(S.c.id == session_id)).scalar() or "web"
        new_device = _new_device(db, user_id, ip, user_agent, exclude=session_id)
        sessions.revoke_in(db, session_id)
        new = sessions.create(db, user_id, kind=kind, mfa_ok=True, ip=ip, user_agent=user_agent)
        _signed_in(db, user_id, kind, ip, user_agent, new_device)
        uow.commit()
        return new


def logout(session_id: int, user_id: int, *, ip: str | None = None) -> None:
    """End session `session_id` server-side: its token stops working at once (K77)."""
    with unit_of_work() as uow:
        sessions.revoke_in(uow.session, session_id)
        events.record(uow.session, "logout", user_id=user_id, ip=ip)
        uow.commit()


# ---------------------------------------------------------------- password reset and change


def request_password_reset(email: str, *, ip: str | None = None) -> None:
    """Email a reset link if an account has this address; do the same visible thing either way (J73).

    The token is 256 bits, stored as SHA-256, valid CREDITS_PASSWORD_RESET_MINUTES (<= 30), single use; a new
    request retires the previous link (one active per user). Raises nothing for unknown or closed accounts.
    """
    token = secrets.token_urlsafe(32)
    now = clock.now()
    expires = now + timedelta(minutes=config.current().password_reset_minutes)
    with unit_of_work() as uow:
        db = uow.session
        user = _find_user(db, email)
        if user is None or user.status == "closed":
            return
        db.execute(update(T).where(T.c.user_id == user.id, T.c.purpose == "reset_password", T.c.used_at.is_(None))
                   .values(used_at=now))
        db.execute(insert(T).values(user_id=user.id, purpose="reset_password", token_hash=_hash(token),
                                    created_at=now, expires_at=expires))
        events.record(db, "password_reset_requested", user_id=user.id, ip=ip)
        notices.security_notice(db, user.id, "password_reset", link=notices.link("/reset-password", token),
                                token=token, expires_at=expires)
        uow.commit()


def _take_token(db: DbSession, token: object, purpose: str) -> Any:
    """The live token row of `purpose`, marked used; InvalidToken otherwise."""
    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        raise InvalidToken()
    now = clock.now()
    row = db.execute(select(T).where(T.c.token_hash == _hash(token), T.c.purpose == purpose)
                     .with_for_update()).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise InvalidToken()
    done = db.execute(update(T).where(T.c.id == row.id, T.c.used_at.is_(None)).values(used_at=now))
    if not done.rowcount:  # type: ignore[attr-defined]
        raise InvalidToken()
    return row


def _user_inputs(db: DbSession, user_id: int) -> list[str]:
    email, name = notices.contact(db, user_id)
    from credits import crypto
    from credits.calls.models import CallerNumber
    from credits.ledger.models import Wallet

    cn: Table = CallerNumber.__table__  # type: ignore[assignment]
    w: Table = Wallet.__table__  # type: ignore[assignment]
    rows = db.execute(select(cn.c.id, cn.c.number_enc).join(w, w.c.id == cn.c.wallet_id)
                      .where(w.c.user_id == user_id)).all()
    phones = [crypto.decrypt(r.number_enc, "caller_numbers", "number_enc", r.id) or "" for r in rows]
    return [email, name, *phones]


def _set_password(db: DbSession, user_id: int, password: str) -> None:
    db.execute(update(U).where(U.c.id == user_id).values(password_hash=hash_password(password),
                                                        password_changed_at=clock.now(), reset_required=False))


def confirm_password_reset(token: str, password: str, *, ip: str | None = None) -> None:
    """Set a new password with a reset token; every session and API token of the user ends (J72).

    Does not sign in: the user then logs in with the new password and, with TOTP on, the second factor.
    Clears `reset_required`. Raises InvalidToken, ValidationError (password rules; the token stays usable).
    """
    with unit_of_work() as uow:
        db = uow.session
        row = _take_token(db, token, "reset_password")
        check_policy(password, user_inputs=_user_inputs(db, row.user_id))
        _set_password(db, row.user_id, password)
        sessions.revoke_all_in(db, row.user_id)
        events.record(db, "password_reset", user_id=row.user_id, ip=ip)
        notices.security_notice(db, row.user_id, "password_changed", how="reset")
        uow.commit()


def change_password(user_id: int, current_password: str, new_password: str, *, session_id: int | None = None,
                    ip: str | None = None) -> None:
    """Change the password after checking the current one; every other session and API token ends.

    Raises mfa.PasswordInvalid (current password wrong), ValidationError (rules).
    """
    with unit_of_work() as uow:
        db = uow.session
        user = db.execute(select(U).where(U.c.id == user_id).with_for_update()).one()
        if not isinstance(current_password, str) or not verify_password(user.password_hash, current_password):
            events.record(db, "password_change_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise mfa.PasswordInvalid()
        check_policy(new_password, user_inputs=_user_inputs(db, user_id))
        _set_password(db, user_id, new_password)
        sessions.revoke_all_in(db, user_id, except_id=session_id)
        events.record(db, "password_changed", user_id=user_id, ip=ip)
        notices.security_notice(db, user_id, "password_changed", how="change")
        uow.commit()
