"""Gateway webhooks: verify the signature on the raw body, store each event id once, apply it once.

`handle(raw_body, signature_header)` is the whole use case behind POST /webhooks/stripe. A bad, missing or
stale signature raises a WebhookError (400) before anything is read or written. A verified event is stored
and applied in ONE transaction, so an event is either recorded with its effect or not at all (an
unexpected error rolls both back and the gateway delivers again). A repeat delivery finds the stored id and
changes nothing; events may come in any order, because every handler checks the state it changes
(a purchase holds its one lot, a dispute its status).

Handled: payment_intent.succeeded / .payment_failed / .processing / .requires_action / .canceled,
charge.refunded, charge.dispute.created / .closed, setup_intent.succeeded. Others are stored as `ignored`.
The payload itself is not kept (it may carry personal data); the event id, type and object id are.
An event about an intent we do not know (another integration on the same account, a purchase row not
committed yet) is answered 200 and grants nothing: the purchase's own request, `GET`, or the reconciliation
job settle it from the gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from credits import clock
from credits.db import insert_for, unit_of_work
from credits.payments import cards, disputes, provider, refunds
from credits.payments.gateway import PaymentIntentResult, WebhookEvent
from credits.payments.models import WebhookEvent as WebhookEventRow
from credits.payments.service import apply_intent, find_purchase

log = logging.getLogger(__name__)

E: Table = WebhookEventRow.__table__  # type: ignore[assignment]

INTENT_EVENTS = (
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.processing",
    "payment_intent.requires_action", "payment_intent.canceled",
)


@dataclass(frozen=True)
class WebhookResult:
    event_id: str
    type: str
    outcome: str
    duplicate: bool = False


def handle(raw_body: bytes, signature_header: str | None) -> WebhookResult:
    """Verify and apply one webhook delivery; return what was done.

    Raises SignatureMissing / SignatureMismatch / SignatureExpired / InvalidWebhookPayload (all 400) with
    nothing stored.
    """
    event = provider.gateway().construct_webhook_event(raw_body, signature_header)
    now = clock.now()
    obj = dict(event.data_object)
    object_id = str(obj.get("id") or "")[:64] or None
    with unit_of_work() as uow:
        s = uow.session
        s.execute(insert_for(uow.dialect)(E).values(
            event_id=event.id[:255], type=event.type[:64], object_id=object_id, received_at=now, outcome="")
            .on_conflict_do_nothing(index_elements=["event_id"]))
        row = s.execute(select(E).where(E.c.event_id == event.id[:255]).with_for_update()).one()
        if row.processed_at is not None:
            uow.rollback()
            return WebhookResult(event.id, event.type, row.outcome, duplicate=True)
        outcome = _dispatch(s, event, obj, now)
        s.execute(update(E).where(E.c.id == row.id).values(processed_at=now, outcome=outcome[:32]))
        uow.commit()
    log.info("webhook %s %s: %s", event.type, event.id, outcome)
    return WebhookResult(event.id, event.type, outcome)


def _dispatch(session: Session, event: WebhookEvent, obj: dict[str, Any], now: Any) -> str:
    if event.type in INTENT_EVENTS:
        intent = intent_from_event(obj)
        if intent is None:
            return "ignored"
        purchase = find_purchase(session, intent.id, dict(intent.metadata))
        if purchase is None:
            return "unknown_intent"
        return apply_intent(session, purchase, intent, now)
    if event.type == "charge.refunded":
        return refunds.charge_refunded(session, obj, now)
    if event.type == "charge.dispute.created":
        return disputes.opened(session, obj, now)
    if event.type == "charge.dispute.closed":
        return disputes.closed(session, obj, now)
    if event.type == "setup_intent.succeeded":
        pm = obj.get("payment_method")
        pm_id = pm.get("id") if isinstance(pm, dict) else pm
        return cards.setup_succeeded(session, str(obj.get("id") or ""), pm_id if isinstance(pm_id, str) else None)
    return "ignored"


def _id_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def intent_from_event(obj: dict[str, Any]) -> PaymentIntentResult | None:
    """A PaymentIntentResult from an event's payment_intent object (None if it is not one)."""
    amount = obj.get("amount")
    if (not isinstance(obj.get("id"), str) or not isinstance(obj.get("status"), str)
            or isinstance(amount, bool) or not isinstance(amount, int)):
        return None
    error = obj.get("last_payment_error") or {}
    raw_meta = obj.get("metadata")
    metadata: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    return PaymentIntentResult(
        id=obj["id"], status=obj["status"], amount_minor=amount, currency=str(obj.get("currency") or "").upper(),
        payment_method=_id_of(obj.get("payment_method")), customer=_id_of(obj.get("customer")),
        latest_charge=_id_of(obj.get("latest_charge")), metadata={str(k): str(v) for k, v in metadata.items()},
        decline_code=error.get("decline_code") if isinstance(error, dict) else None,
        error_code=error.get("code") if isinstance(error, dict) else None,
    )
