"""Queue account emails (verification, reset, security notices) in the caller's transaction.

Templates (credits/notify/catalog.py; context keys in brackets, every one also gets `name` and `at`):
verify_email [link, token, expires_at], email_change_confirm [link, token, expires_at, new_email],
password_reset [link, token, expires_at], account_exists [link], new_sign_in [ip_prefix, user_agent, kind],
password_changed [how], mfa_changed [change], email_changed [old_email, new_email, to_old_address].
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session as DbSession

from credits import clock, config, crypto
from credits.accounts.models import User
from credits.notify.outbox import enqueue

U: Table = User.__table__  # type: ignore[assignment]


def public_url() -> str:
    return str(getattr(config.current(), "public_url", "") or "http://127.0.0.1:5000")


def link(path: str, token: str) -> str:
    """An absolute link to a page of the web store carrying a single-use token."""
    return f"{public_url()}{path}?token={token}"


def contact(db: DbSession, user_id: int) -> tuple[str, str]:
    """(email, name) of a user, decrypted."""
    row = db.execute(select(U.c.email_enc, U.c.name_enc).where(U.c.id == user_id)).one()
    email = crypto.decrypt(row.email_enc, "users", "email_enc", user_id) or ""
    name = crypto.decrypt(row.name_enc, "users", "name_enc", user_id) or ""
    return email, name


def send(db: DbSession, user_id: int | None, template: str, to: str, name: str = "", **context: Any) -> int | None:
    """Queue `template` to `to` with `context` (plus name and time) in the caller's transaction.

    Through credits.notify.notices.notify when the message is about a user: it checks the template and its
    required keys against the catalog, and security notices get their "this wasn't me" link.
    """
    from credits.notify.notices import iso, notify

    if user_id is not None:
        return notify(db, user_id, template, to=to, **({"name": name} if name else {}), **context)
    body = {"name": name, "at": iso(clock.now())}
    body.update({k: iso(v) if isinstance(v, datetime) else v for k, v in context.items()})
    return enqueue(db, template=template, to=to, context=body)


def security_notice(db: DbSession, user_id: int, template: str, **context: Any) -> int | None:
    """Queue a security notice (new sign-in, password or MFA change...) to the user's current address."""
    email, name = contact(db, user_id)
    if not email:
        return None
    return send(db, user_id, template, email, name, **context)
