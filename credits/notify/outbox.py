"""Queue a notification in the caller's transaction; the deliver-outbox job sends it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from credits import clock, crypto
from credits.notify.catalog import SECURITY_NOTICES
from credits.notify.models import OutboxMessage

OB: Table = OutboxMessage.__table__  # type: ignore[assignment]


def enqueue(session: Session, *, template: str, to: str, context: dict[str, Any], user_id: int | None = None,
            dedupe_key: str | None = None) -> int | None:
    """Queue email `template` (templates/email/<template>.txt and .html) to address `to` with `context`.

    Runs in the caller's transaction, so the message exists exactly when the change that causes it commits.
    Recipient and context are encrypted at rest. With `dedupe_key`, a second enqueue of the same key does
    nothing and returns None; otherwise returns the message id.

    A security notice (credits.notify.catalog.SECURITY_NOTICES) for a `user_id` gets its "this wasn't me" link
    here (`wasnt_me_url`, a fresh single-use token), so that no caller can forget it.
    """
    if dedupe_key is not None:
        seen = session.execute(select(OB.c.id).where(OB.c.dedupe_key == dedupe_key)).scalar()
        if seen is not None:
            return None
    if template in SECURITY_NOTICES and user_id is not None and "wasnt_me_url" not in context:
        from credits.security import links

        context = {**context, "wasnt_me_url": links.url(links.issue(session, user_id))}
    now = clock.now()
    message_id: int = session.execute(
        insert(OB).values(user_id=user_id, template=template, recipient_enc="", context_enc="", status="pending",
                         attempts=0, next_attempt_at=now, created_at=now, dedupe_key=dedupe_key).returning(OB.c.id)
    ).scalar_one()
    session.execute(update(OB).where(OB.c.id == message_id).values(
        recipient_enc=crypto.encrypt(to, "outbox", "recipient_enc", message_id),
        context_enc=crypto.encrypt(json.dumps(context, default=str), "outbox", "context_enc", message_id),
    ))
    return message_id


def read(session: Session, message_id: int) -> tuple[str, str, dict[str, Any]]:
    """(template, recipient, context) of a queued message, decrypted."""
    row = session.execute(select(OB).where(OB.c.id == message_id)).one()
    to = crypto.decrypt(row.recipient_enc, "outbox", "recipient_enc", row.id) or ""
    context = json.loads(crypto.decrypt(row.context_enc, "outbox", "context_enc", row.id) or "{}")
    return row.template, to, context
