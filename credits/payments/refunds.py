"""Refunds and credit notes by staff, and refunds learnt from the gateway (charge.refunded).

A refund gives back card money for credit the customer has not used: refundable = min(paid - refunded,
unused credit of the purchase's lot). The credit leaves the wallet in the transaction that records the
request (so it cannot be spent while the refund is on its way); the gateway refund follows outside any
transaction with the refund's own idempotency key; a refund the gateway refuses (or never receives) puts the
credit back. Above CREDITS_REFUND_APPROVAL_ABOVE, or past a staff member's CREDITS_REFUND_DAILY_LIMIT in
24 hours, a second, different staff member must approve first (CHECKLIST M89). A reason is required; every
step is in the audit log with the staff member, reason and ticket.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from credits import audit, clock, config, money
from credits.db import unit_of_work
from credits.errors import Conflict, Forbidden, InsufficientCredit, LimitExceeded, NotFound, ValidationError
from credits.ledger.models import Lot
from credits.ledger.operator import grant_by_operator
from credits.ledger.refunds import _restore_refund_debit
from credits.ledger.service import LotView, _debit_lot
from credits.payments import provider
from credits.payments.errors import GatewayError, GatewayTimeout
from credits.payments.models import Dispute, Purchase, Refund

log = logging.getLogger(__name__)

R: Table = Refund.__table__  # type: ignore[assignment]
PU: Table = Purchase.__table__  # type: ignore[assignment]
D: Table = Dispute.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]

#: Refunds that count against what may still be refunded (the credit already left the wallet for them).
COUNTED = ("pending_approval", "processing", "succeeded")
REASON_MAX = 500
TICKET_MAX = 64


@dataclass(frozen=True)
class RefundView:
    id: int
    purchase_id: int
    amount: int
    currency: str
    status: str
    reason: str
    ticket: str | None
    requested_by: int | None
    approved_by: int | None
    gateway_refund_id: str | None
    failure_reason: str | None
    created_at: datetime

    @property
    def needs_approval(self) -> bool:
        return self.status == "pending_approval"


def _view(row: Any) -> RefundView:
    return RefundView(row.id, row.purchase_id, row.amount, row.currency, row.status, row.reason, row.ticket,
                      row.requested_by, row.approved_by, row.gateway_refund_id, row.failure_reason, row.created_at)


def get_refund(refund_id: int) -> RefundView:
    with unit_of_work() as uow:
        row = uow.session.execute(select(R).where(R.c.id == refund_id)).first()
        if row is None:
            raise NotFound("no such refund")
        return _view(row)


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("a reason is required", field="reason")
    text = reason.strip()
    if len(text) > REASON_MAX or not text.isprintable():
        raise ValidationError(f"a reason is at most {REASON_MAX} printable characters", field="reason")
    return text


def _check_ticket(ticket: object) -> str | None:
    if ticket is None or ticket == "":
        return None
    if not isinstance(ticket, str) or len(ticket) > TICKET_MAX or not ticket.isprintable():
        raise ValidationError(f"a ticket is at most {TICKET_MAX} printable characters", field="ticket")
    return ticket.strip()


def _refunded(session: Session, purchase_id: int) -> int:
    return int(session.execute(
        select(func.coalesce(func.sum(R.c.amount), 0)).where(R.c.purchase_id == purchase_id, R.c.status.in_(COUNTED))
    ).scalar_one())


def _unused(session: Session, lot_id: int, now: datetime) -> int:
    lot = session.execute(select(L.c.remaining, L.c.expires_at).where(L.c.id == lot_id)).one()
    return int(lot.remaining) if lot.expires_at > now else 0


def refundable(purchase_id: int) -> int:
    """What may still be refunded of a purchase, in micro-units: min(paid - refunded, unused credit of its lot)."""
    now = clock.now()
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id)).first()
        if row is None or row.status != "succeeded" or row.lot_id is None:
            return 0
        return min(int(row.amount) - _refunded(uow.session, purchase_id), _unused(uow.session, row.lot_id, now))


def _needs_approval(session: Session, actor_id: int, amount: int, currency: str, now: datetime) -> bool:
    cfg = config.current()
    if amount > money.parse_amount(cfg.refund_approval_above, currency):
        return True
    today = int(session.execute(
        select(func.coalesce(func.sum(R.c.amount), 0))
        .where(R.c.requested_by == actor_id, R.c.created_at > now - timedelta(days=1), R.c.status.in_(COUNTED))
    ).scalar_one())
    return today + amount > money.parse_amount(cfg.refund_daily_limit, currency)


def request_refund(purchase_id: int, amount: str, reason: str, *, actor_id: int,
                   ticket: str | None = None) -> RefundView:
    """Refund `amount` (a decimal string in the purchase's currency) of a succeeded purchase; staff only.

    In one transaction: checks what is refundable, takes the credit out of the purchase's lot and records the
    refund (and its audit entry). Then, unless it needs a second approver (`pending_approval`), sends it to
    the gateway (see `approve_refund` for the outcomes). Raises ValidationError (reason, amount), NotFound,
    Conflict (not a succeeded purchase, disputed), LimitExceeded (more than paid and not yet refunded),
    InsufficientCredit (the credit was used, expired or is held by calls).
    """
    text = _check_reason(reason)
    ticket = _check_ticket(ticket)
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        purchase = s.execute(select(PU).where(PU.c.id == purchase_id).with_for_update()).first()
        if purchase is None:
            raise NotFound("no such purchase")
        if purchase.status != "succeeded" or purchase.lot_id is None or purchase.payment_intent_id is None:
            raise Conflict("only a succeeded purchase can be refunded")
        if s.execute(select(D.c.id).where(D.c.purchase_id == purchase_id, D.c.status == "open")).first():
            raise Conflict("this payment is disputed: the bank decides, it cannot be refunded now")
        micro = money.parse_amount(amount, purchase.currency)
        left = purchase.amount - _refunded(s, purchase_id)
        if micro > left:
            raise LimitExceeded(f"at most {money.format_display(left, purchase.currency)} of this payment is left "
                                "to refund")
        if micro > _unused(s, purchase.lot_id, now):
            raise InsufficientCredit("the customer has already used or lost this credit; it cannot be refunded")
        approval = _needs_approval(s, actor_id, micro, purchase.currency, now)
        refund_id: int = s.execute(
            insert(R).values(purchase_id=purchase_id, amount=micro, amount_minor=money.micro_to_minor(
                micro, purchase.currency), currency=purchase.currency,
                status="pending_approval" if approval else "processing", reason=text, ticket=ticket,
                requested_by=actor_id, idempotency_key=f"refund:{secrets.token_hex(12)}", created_at=now)
            .returning(R.c.id)
        ).scalar_one()
        tx_id, _ = _debit_lot(s, purchase.lot_id, micro, now, key=f"refund:{refund_id}:debit",
                              memo=f"refund of purchase {purchase_id}", actor=f"staff:{actor_id}")
        s.execute(update(R).where(R.c.id == refund_id).values(debit_tx_id=tx_id))
        audit.record(s, f"staff:{actor_id}", "refund.request", f"purchase:{purchase_id}", refund=refund_id,
                     amount=money.format_micro(micro), currency=purchase.currency, reason=text, ticket=ticket,
                     needs_approval=approval)
        uow.commit()
    if approval:
        return get_refund(refund_id)
    return execute(refund_id)


def approve_refund(refund_id: int, *, approver_id: int) -> RefundView:
    """Approve a refund waiting for a second staff member, then send it to the gateway.

    Outcomes: `succeeded`; `failed` (the gateway refused or could not be reached: the credit is back in the
    wallet); `processing` (no answer: the reconciliation job retries with the same key). Raises NotFound,
    Conflict (not waiting for approval), Forbidden (the approver asked for the refund).
    """
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        row = s.execute(select(R).where(R.c.id == refund_id).with_for_update()).first()
        if row is None:
            raise NotFound("no such refund")
        if row.status != "pending_approval":
            raise Conflict(f"this refund is {row.status}, not waiting for approval")
        if row.requested_by == approver_id:
            raise Forbidden("a second staff member must approve this refund")
        s.execute(update(R).where(R.c.id == refund_id)
                  .values(status="processing", approved_by=approver_id, decided_at=now))
        audit.record(s, f"staff:{approver_id}", "refund.approve", f"purchase:{row.purchase_id}", refund=refund_id,
                     amount=money.format_micro(row.amount), requested_by=row.requested_by, ticket=row.ticket)
        uow.commit()
    return execute(refund_id)


def reject_refund(refund_id: int, *, approver_id: int, reason: str) -> RefundView:
    """Turn down a refund waiting for approval; the credit goes back to the wallet. Raises like approve_refund."""
    text = _check_reason(reason)
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        row = s.execute(select(R).where(R.c.id == refund_id).with_for_update()).first()
        if row is None:
            raise NotFound("no such refund")
        if row.status != "pending_approval":
            raise Conflict(f"this refund is {row.status}, not waiting for approval")
        if row.requested_by == approver_id:
            raise Forbidden("a second staff member must decide on this refund")
        restore = _restore_refund_debit(s, row.debit_tx_id, now, key=f"refund:{refund_id}:restore",
                                        memo=f"refund {refund_id} rejected", actor=f"staff:{approver_id}")
        s.execute(update(R).where(R.c.id == refund_id).values(
            status="rejected", approved_by=approver_id, decided_at=now, finished_at=now, restore_tx_id=restore,
            failure_reason="rejected"))
        audit.record(s, f"staff:{approver_id}", "refund.reject", f"purchase:{row.purchase_id}", refund=refund_id,
                     reason=text)
        uow.commit()
    return get_refund(refund_id)


def execute(refund_id: int) -> RefundView:
    """Send a `processing` refund to the gateway (again, with the same key) and record the outcome."""
    with unit_of_work() as uow:
        row = uow.session.execute(
            select(R, PU.c.payment_intent_id).join(PU, PU.c.id == R.c.purchase_id).where(R.c.id == refund_id)
        ).first()
    if row is None:
        raise NotFound("no such refund")
    if row.status != "processing":
        return _view(row)
    try:
        result = provider.gateway().refund(
            row.payment_intent_id, amount_minor=row.amount_minor, idempotency_key=row.idempotency_key,
            metadata={"refund_id": str(refund_id), "purchase_id": str(row.purchase_id)})
    except GatewayTimeout:
        log.warning("refund %s: no answer from the gateway; reconciliation retries it", refund_id)
        return get_refund(refund_id)
    except GatewayError as exc:
        # RefundFailed (refused), GatewayUnavailable (never sent), GatewayNotFound: nothing was refunded.
        return _failed(refund_id, str(exc.extra.get("reason") or exc.code))
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        current = s.execute(select(R).where(R.c.id == refund_id).with_for_update()).one()
        if current.status == "processing" or current.gateway_refund_id is None:
            clash = s.execute(select(R.c.id).where(R.c.gateway_refund_id == result.id, R.c.id != refund_id)).first()
            s.execute(update(R).where(R.c.id == refund_id).values(
                status="succeeded", finished_at=current.finished_at or now,
                gateway_refund_id=None if clash else result.id))
        if current.status == "processing":
            audit.record(s, "gateway", "refund.succeeded", f"purchase:{current.purchase_id}", refund=refund_id,
                         gateway_refund=result.id)
        uow.commit()
    return get_refund(refund_id)


def _failed(refund_id: int, reason: str) -> RefundView:
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        row = s.execute(select(R).where(R.c.id == refund_id).with_for_update()).one()
        if row.status == "processing":
            restore = _restore_refund_debit(s, row.debit_tx_id, now, key=f"refund:{refund_id}:restore",
                                            memo=f"refund {refund_id} failed", actor="gateway")
            s.execute(update(R).where(R.c.id == refund_id).values(
                status="failed", failure_reason=reason[:64], restore_tx_id=restore, finished_at=now))
            audit.record(s, "gateway", "refund.failed", f"purchase:{row.purchase_id}", refund=refund_id,
                         reason=reason[:64])
        uow.commit()
    return get_refund(refund_id)


def retry_stuck(now: datetime | None = None, *, older_than: timedelta | None = None, limit: int = 100) -> int:
    """Send refunds left `processing` (the gateway did not answer) again with their key; return how many."""
    now = now or clock.now()
    older_than = older_than or timedelta(minutes=config.current().reconcile_after_minutes)
    with unit_of_work() as uow:
        ids: list[int] = list(uow.session.execute(
            select(R.c.id).where(R.c.status == "processing",
                                 func.coalesce(R.c.decided_at, R.c.created_at) <= now - older_than)
            .order_by(R.c.id).limit(limit)
        ).scalars().all())
    done = 0
    for refund_id in ids:
        if execute(refund_id).status != "processing":
            done += 1
    return done


def charge_refunded(session: Session, charge: dict[str, Any], now: datetime) -> str:
    """Webhook charge.refunded: confirm our refunds the gateway has made; book a refund made at the gateway
    itself (dashboard) by taking its credit out of the lot, as far as it is unused. Returns the outcome."""
    from credits.payments.service import find_purchase

    intent_id = charge.get("payment_intent")
    if isinstance(intent_id, dict):
        intent_id = intent_id.get("id")
    purchase = find_purchase(session, intent_id if isinstance(intent_id, str) else None,
                             charge.get("metadata") if isinstance(charge.get("metadata"), dict) else None)
    if purchase is None or purchase.payment_intent_id != intent_id or purchase.lot_id is None:
        return "unknown_intent"
    total = charge.get("amount_refunded")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        return "ignored"
    ours = session.execute(select(R).where(R.c.purchase_id == purchase.id, R.c.status.in_(("processing",
                                                                                         "succeeded")))).all()
    known = sum(r.amount_minor for r in ours)
    outcome = "noted"
    processing = [r for r in ours if r.status == "processing"]
    if processing and total >= known:
        session.execute(update(R).where(R.c.id.in_([r.id for r in processing]))
                        .values(status="succeeded", finished_at=now))
        outcome = "refund_confirmed"
    extra = total - known
    if extra > 0:
        outcome = _external_refund(session, purchase, extra, charge, now)
    return outcome


def _external_refund(session: Session, purchase: Row[Any], extra_minor: int, charge: dict[str, Any],
                     now: datetime) -> str:
    micro = money.minor_to_micro(extra_minor, purchase.currency)
    refund_id: int = session.execute(
        insert(R).values(purchase_id=purchase.id, amount=micro, amount_minor=extra_minor, currency=purchase.currency,
                         status="succeeded", reason="refunded at the gateway",
                         idempotency_key=f"gateway-refund:{charge.get('id')}:{charge.get('amount_refunded')}"[:100],
                         created_at=now, finished_at=now).returning(R.c.id)
    ).scalar_one()
    take = min(micro, _unused(session, purchase.lot_id, now))
    taken = 0
    if take > 0:
        try:
            tx_id, _ = _debit_lot(session, purchase.lot_id, take, now, key=f"refund:{refund_id}:debit",
                                  memo=f"refund of purchase {purchase.id} at the gateway", actor="gateway")
            session.execute(update(R).where(R.c.id == refund_id).values(debit_tx_id=tx_id))
            taken = take
        except InsufficientCredit:
            taken = 0  # held by calls in progress: left as unrecovered, for staff to look at
    audit.record(session, "gateway", "refund.external", f"purchase:{purchase.id}", refund=refund_id,
                 amount=money.format_micro(micro), recovered=money.format_micro(taken),
                 unrecovered=money.format_micro(micro - taken))
    return "external_refund"


def issue_credit_note(account: str, amount: str, reason: str, *, actor_id: int,
                      ticket: str | None = None) -> LotView:
    """Grant goodwill credit (a credit note) to an account named by account number or email; staff only.

    A reason is required; the grant and its audit entry (staff member, reason, ticket) are one transaction.
    Raises ValidationError, NotFound.
    """
    text = _check_reason(reason)
    ticket = _check_ticket(ticket)
    if not isinstance(account, str) or not account.strip() or len(account) > 320:
        raise ValidationError("account is an account number or email address", field="account")
    memo = f"{text} (ticket {ticket})" if ticket else text
    return grant_by_operator(account, amount, memo, source="credit_note", actor=f"staff:{actor_id}")
