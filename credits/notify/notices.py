"""Queue an email to a user by id: the address is decrypted here, the template checked against the catalog.

`security_notice` is what features call after a security-relevant change (sign-in, password, MFA, email,
transfers): the message carries a "this wasn't me" link (added by `outbox.enqueue`) that leads, signed out, to
the compromise report.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from credits import clock, crypto
from credits.accounts.models import User
from credits.notify import outbox
from credits.notify.catalog import CATALOG, SECURITY_NOTICES, missing_keys

U: Table = User.__table__  # type: ignore[assignment]


def iso(value: datetime | date) -> str:
    """A time for an email context: ISO 8601, UTC with "Z" (templates format it with `| when`)."""
    return value.isoformat().replace("+00:00", "Z")


def address_of(session: Session, user_id: int) -> tuple[str, str]:
    """(email, name) of a user, decrypted; ("", "") when there is no such user."""
    row = session.execute(select(U.c.email_enc, U.c.name_enc).where(U.c.id == user_id)).first()
    if row is None:
        return "", ""
    email = crypto.decrypt(row.email_enc, "users", "email_enc", user_id) or ""
    name = crypto.decrypt(row.name_enc, "users", "name_enc", user_id) or ""
    return email, name


def notify(session: Session, user_id: int, template: str, /, *, to: str | None = None,
           dedupe_key: str | None = None, **context: Any) -> int | None:
    """Queue `template` to the user (or to `to`, e.g. the old address of an email change) in the caller's
    transaction; return the message id, or None when deduplicated or the user has no address.

    Adds `name` and `at` (now) unless given; datetimes become ISO strings. Raises ValueError for a template
    not in the catalog or a context that lacks one of its required keys (a programming error: fail the
    transaction rather than queue a message that can never render).
    """
    if template not in CATALOG:
        raise ValueError(f"unknown email template {template!r}")
    email, name = address_of(session, user_id)
    body: dict[str, Any] = {"name": name, "at": iso(clock.now())}
    body.update({k: iso(v) if isinstance(v, (datetime, date)) else v for k, v in context.items()})
    missing = missing_keys(template, body)
    if missing:
        raise ValueError(f"email {template!r} needs {', '.join(missing)}")
    recipient = to or email
    if not recipient:
        return None
    return outbox.enqueue(session, template=template, to=recipient, context=body, user_id=user_id,
                          dedupe_key=dedupe_key)


def security_notice(session: Session, user_id: int, kind: str, /, *, to: str | None = None,
                    dedupe_key: str | None = None, **context: Any) -> int | None:
    """Queue security notice `kind` (new_sign_in, password_changed, mfa_changed, email_changed, transfer_sent,
    transfer_received) with its "this wasn't me" link. Raises ValueError for a kind that is not a security
    notice or a context that lacks a required key."""
    if kind not in SECURITY_NOTICES:
        raise ValueError(f"{kind!r} is not a security notice; use notify()")
    return notify(session, user_id, kind, to=to, dedupe_key=dedupe_key, **context)
