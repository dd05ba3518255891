"""Server-side sessions and personal API tokens: create, resolve (idle and absolute timeouts), touch, list, revoke.

The client holds a random 256-bit token; only its SHA-256 is stored (`sessions.token_hash`), so a copy of the
database does not let anyone sign in. Web sessions (cookie) and personal API tokens (`Authorization: Bearer`)
are rows of the same table, told apart by `kind`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, insert, select, update
from sqlalchemy.orm import Session as DbSession

from credits import clock, config
from credits.accounts.models import SESSION_KINDS, Session, User
from credits.db import unit_of_work
from credits.errors import NotFound, Unauthorized
from credits.security import events
from credits.security.events import ip_prefix

S: Table = Session.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]

#: Personal API tokens carry a visible prefix so that they can be recognised (and scrubbed from logs).
API_TOKEN_PREFIX = "cpt_"  # noqa: S105 - a visible prefix, not a secret
#: last_seen_at is written at most this often per session: a request does not write on every call.
TOUCH_RESOLUTION = timedelta(seconds=60)
_MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class SessionInfo:
    """A live session as the web layer sees it (never the token itself)."""

    id: int
    user_id: int
    kind: str
    role: str
    mfa_ok: bool
    #: True when the user has TOTP enabled: a session with mfa_ok False still owes the second factor.
    mfa_enabled: bool
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    absolute_expires_at: datetime
    ip_prefix: str | None
    user_agent: str | None

    @property
    def mfa_pending(self) -> bool:
        return self.mfa_enabled and not self.mfa_ok


@dataclass(frozen=True)
class NewSession:
    """A session just created: `token` goes to the client once and is never stored."""

    token: str
    info: SessionInfo


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def lifetimes(kind: str) -> tuple[timedelta, timedelta]:
    """(idle timeout, absolute lifetime) of a session kind, from the settings."""
    cfg = config.current()
    if kind == "api":
        return timedelta(days=cfg.api_token_idle_days), timedelta(days=cfg.api_token_days)
    return timedelta(minutes=cfg.session_idle_minutes), timedelta(hours=cfg.session_absolute_hours)


def create(db: DbSession, user_id: int, *, kind: str = "web", mfa_ok: bool = False, ip: str | None = None,
           user_agent: str | None = None) -> NewSession:
    """Create a session for `user_id` in the caller's transaction and return it with its one-time token.

    A fresh random id every time: signing in, and any privilege change (the second factor), makes a new
    session and revokes the old one (the caller does that with `revoke`).
    """
    if kind not in SESSION_KINDS:
        raise ValueError(f"unknown session kind {kind!r}")
    token = secrets.token_urlsafe(32)
    if kind == "api":
        token = API_TOKEN_PREFIX + token
    csrf = secrets.token_urlsafe(32)
    now = clock.now()
    _idle, absolute = lifetimes(kind)
    agent = (user_agent or "")[:200] or None
    prefix = ip_prefix(ip)
    session_id: int = db.execute(
        insert(S).values(token_hash=token_hash(token), user_id=user_id, kind=kind, created_at=now, last_seen_at=now,
                         absolute_expires_at=now + absolute, mfa_ok=mfa_ok, csrf_token=csrf, ip_prefix=prefix,
                         user_agent=agent).returning(S.c.id)
    ).scalar_one()
    user = db.execute(select(U.c.role, U.c.mfa_enabled_at).where(U.c.id == user_id)).one()
    info = SessionInfo(session_id, user_id, kind, user.role, mfa_ok, user.mfa_enabled_at is not None, csrf, now, now,
                       now + absolute, prefix, agent)
    return NewSession(token, info)


def _live(db: DbSession, token: str | None, kind: str | None) -> SessionInfo | None:
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    row = db.execute(
        select(S, U.c.role, U.c.status, U.c.mfa_enabled_at).join(U, U.c.id == S.c.user_id)
        .where(S.c.token_hash == token_hash(token))
    ).first()
    if row is None or row.revoked_at is not None or (kind is not None and row.kind != kind):
        return None
    if row.status == "closed":
        return None
    now = clock.now()
    idle, _absolute = lifetimes(row.kind)
    if now >= row.absolute_expires_at or now - row.last_seen_at >= idle:
        return None
    return SessionInfo(row.id, row.user_id, row.kind, row.role, row.mfa_ok, row.mfa_enabled_at is not None,
                       row.csrf_token, row.created_at, row.last_seen_at, row.absolute_expires_at, row.ip_prefix,
                       row.user_agent)


def resolve(token: str | None, *, kind: str | None = None) -> SessionInfo:
    """Return the live session for `token` and record activity (at most once a minute).

    Raises Unauthorized (no detail) for a missing, unknown, revoked, idle-expired or absolutely expired token,
    a token of another kind, or a closed account.
    """
    with unit_of_work() as uow:
        info = _live(uow.session, token, kind)
        if info is None:
            raise Unauthorized()
        now = clock.now()
        if now - info.last_seen_at >= TOUCH_RESOLUTION:
            uow.session.execute(update(S).where(S.c.id == info.id).values(last_seen_at=now))
            uow.commit()
        return info


def find(db: DbSession, token: str | None) -> SessionInfo | None:
    """The live session for `token` (any kind) in the caller's transaction, or None; writes nothing.

    Login uses it to retire the pre-login session."""
    return _live(db, token, None)


def _revoke_where(db: DbSession, *conditions: ColumnElement[bool]) -> int:
    result = db.execute(update(S).where(S.c.revoked_at.is_(None), *conditions).values(revoked_at=clock.now()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def revoke_in(db: DbSession, session_id: int) -> None:
    """Revoke one session in the caller's transaction (no ownership check: callers pass their own)."""
    _revoke_where(db, S.c.id == session_id)


def revoke_all_in(db: DbSession, user_id: int, *, except_id: int | None = None) -> int:
    """Revoke every live session and API token of `user_id` (but `except_id`) in the caller's transaction."""
    conditions: list[ColumnElement[bool]] = [S.c.user_id == user_id]
    if except_id is not None:
        conditions.append(S.c.id != except_id)
    return _revoke_where(db, *conditions)


def revoke(session_id: int, *, user_id: int, ip: str | None = None) -> None:
    """Revoke session `session_id` of `user_id`. Raises NotFound when it is not theirs or not live (K79)."""
    with unit_of_work() as uow:
        if _revoke_where(uow.session, S.c.id == session_id, S.c.user_id == user_id) == 0:
            raise NotFound("no such session")
        events.record(uow.session, "session_revoked", user_id=user_id, ip=ip)
        uow.commit()


def revoke_all(user_id: int, *, except_id: int | None = None, ip: str | None = None) -> int:
    """Revoke every session and API token of `user_id`, optionally keeping `except_id`; return how many (K79)."""
    with unit_of_work() as uow:
        count = revoke_all_in(uow.session, user_id, except_id=except_id)
        events.record(uow.session, "sessions_revoked", user_id=user_id, ip=ip, detail=str(count))
        uow.commit()
        return count


def staff_revoke_all(actor_id: int, user_id: int) -> int:
    """A staff member signs customer `user_id` out everywhere (audit-logged); return how many ended.

    Raises NotFound for an unknown account.
    """
    from credits import audit

    with unit_of_work() as uow:
        db = uow.session
        if db.execute(select(U.c.id).where(U.c.id == user_id)).scalar() is None:
            raise NotFound("no such account")
        count = revoke_all_in(db, user_id)
        audit.record(db, f"user:{actor_id}", "sessions.revoke_all", f"user:{user_id}", count=count)
        events.record(db, "sessions_revoked_by_staff", user_id=user_id, detail=str(count))
        uow.commit()
        return count


def list_live(user_id: int) -> list[SessionInfo]:
    """The user's live sessions and API tokens, newest first."""
    now = clock.now()
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(S, U.c.role, U.c.mfa_enabled_at).join(U, U.c.id == S.c.user_id)
            .where(S.c.user_id == user_id, S.c.revoked_at.is_(None), S.c.absolute_expires_at > now)
            .order_by(S.c.created_at.desc(), S.c.id.desc())
        ).all()
    out = []
    for row in rows:
        idle, _absolute = lifetimes(row.kind)
        if now - row.last_seen_at >= idle:
            continue
        out.append(SessionInfo(row.id, row.user_id, row.kind, row.role, row.mfa_ok, row.mfa_enabled_at is not None,
                               row.csrf_token, row.created_at, row.last_seen_at, row.absolute_expires_at,
                               row.ip_prefix, row.user_agent))
    return out
