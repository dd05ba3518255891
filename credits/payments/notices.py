"""Queue payment emails in the caller's transaction (delivered later by the outbox job).

Templates (credits/notify/catalog.py; every context also has `name` and `at`; amounts in the currency's own
precision, "10.00"):
- purchase_receipt [purchase_id, amount, currency, card_brand, card_last4, expires_at, balance, kind]
- auto_recharge_action_required [amount, currency, link, expires_at, purchase_id]: the bank wants the customer
  to confirm an auto-recharge on-session (single-use pay link, EmailToken purpose pay_link)
- auto_recharge_failed [amount, currency, reason (a phrase), disabled, failures, next_attempt_at]
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from credits import clock, config, crypto, money
from credits.accounts.models import EmailToken, User
from credits.notify.outbox import enqueue

U: Table = User.__table__  # type: ignore[assignment]
T: Table = EmailToken.__table__  # type: ignore[assignment]
PAY_LINK_PATH = "/pay"


REASONS = {
    "card_declined": "your card was declined",
    "authentication_required": "your bank asked you to confirm the payment",
    "authentication_abandoned": "the payment was not confirmed with your bank in time",
    "payment_intent_authentication_failure": "the confirmation with your bank failed",
    "no_intent": "the payment service did not take the payment",
}


def reason_text(code: str | None) -> str:
    """A failure code as a phrase for the customer (never the bank's decline code)."""
    return REASONS.get(code or "", "the payment did not go through")


def human(amount: int, currency: str) -> str:
    """Micro-units in the currency's own precision, without the code: 10_000_000 USD -> "10.00"."""
    return money.format_display(amount, currency).rsplit(" ", 1)[0]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def public_url() -> str:
    return str(getattr(config.current(), "public_url", "") or "http://127.0.0.1:5000").rstrip("/")


def send(session: Session, user_id: int, template: str, *, dedupe_key: str | None = None,
         **context: Any) -> int | None:
    """Queue `template` to the user's current address; returns the message id (None: deduplicated, no address)."""
    row = session.execute(select(U.c.email_enc, U.c.name_enc).where(U.c.id == user_id)).first()
    if row is None:
        return None
    email = crypto.decrypt(row.email_enc, "users", "email_enc", user_id) or ""
    if not email:
        return None
    body: dict[str, Any] = {"name": crypto.decrypt(row.name_enc, "users", "name_enc", user_id) or "",
                            "at": _iso(clock.now())}
    body.update({k: _iso(v) if isinstance(v, datetime) else v for k, v in context.items()})
    return enqueue(session, template=template, to=email, context=body, user_id=user_id, dedupe_key=dedupe_key)


def pay_link(session: Session, user_id: int, purchase_id: int) -> tuple[str, str, datetime]:
    """A single-use pay link for an auto-recharge waiting for 3-D Secure: (link, token, expires_at).

    Only the token's SHA-256 is stored (EmailToken, purpose pay_link); the purchase id is kept encrypted in
    its data. Earlier unused pay links of the user are retired.
    """
    token = secrets.token_urlsafe(32)
    now = clock.now()
    expires = now + timedelta(hours=config.current().pay_link_hours)
    session.execute(update(T).where(T.c.user_id == user_id, T.c.purpose == "pay_link", T.c.used_at.is_(None))
                    .values(used_at=now))
    token_id: int = session.execute(
        insert(T).values(user_id=user_id, purpose="pay_link", token_hash=hashlib.sha256(token.encode()).hexdigest(),
                         created_at=now, expires_at=expires).returning(T.c.id)
    ).scalar_one()
    session.execute(update(T).where(T.c.id == token_id).values(
        data_enc=crypto.encrypt(f"purchase:{purchase_id}", "email_tokens", "data_enc", token_id)))
    return f"{public_url()}{PAY_LINK_PATH}?token={token}", token, expires
