"""The "this wasn't me" link of security emails: a single-use EmailToken (purpose compromise) that lets a
signed-out person report their account compromised."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from credits import clock, config
from credits.accounts.models import EmailToken
from credits.errors import DomainError

T: Table = EmailToken.__table__  # type: ignore[assignment]
PURPOSE = "compromise"
#: How long a "this wasn't me" link works: long enough for someone who reads their mail late.
LINK_TTL = timedelta(days=30)
PATH = "/security/compromised"


class InvalidLink(DomainError):
    """The link is unknown, used or expired. Says nothing more (which of these would help a guesser)."""

    status = 400
    code = "invalid_link"
    title = "This link is not valid"

    def __init__(self) -> None:
        super().__init__("This link is not valid or has expired. Sign in to report a problem from your settings.")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(session: Session, user_id: int) -> str:
    """Create a "this wasn't me" token for `user_id` in the caller's transaction; return it (256 bits).

    Only its SHA-256 is stored; the token itself travels in the email (encrypted in the outbox).
    """
    token = secrets.token_urlsafe(32)
    now = clock.now()
    session.execute(insert(T).values(user_id=user_id, purpose=PURPOSE, token_hash=_hash(token), created_at=now,
                                     expires_at=now + LINK_TTL))
    return token


def url(token: str) -> str:
    return f"{config.current().public_url}{PATH}?token={token}"


def _live(session: Session, token: object) -> int | None:
    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        return None
    row = session.execute(select(T.c.id, T.c.user_id, T.c.expires_at, T.c.used_at)
                          .where(T.c.token_hash == _hash(token), T.c.purpose == PURPOSE)).first()
    if row is None or row.used_at is not None or row.expires_at <= clock.now():
        return None
    return int(row.id)


def check(session: Session, token: object) -> int:
    """The user id the live token `token` names, without using it up. Raises InvalidLink."""
    token_id = _live(session, token)
    if token_id is None:
        raise InvalidLink()
    return int(session.execute(select(T.c.user_id).where(T.c.id == token_id)).scalar_one())


def take(session: Session, token: object) -> int:
    """Use up the live token `token` in the caller's transaction; return its user id. Raises InvalidLink."""
    user_id = check(session, token)
    used = session.execute(update(T).where(T.c.token_hash == _hash(str(token)), T.c.used_at.is_(None))
                           .values(used_at=clock.now())).rowcount  # type: ignore[attr-defined]
    if not used:  # another request used it between our read and this write
        raise InvalidLink()
    return user_id
