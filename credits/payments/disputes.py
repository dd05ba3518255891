"""Disputes (chargebacks), from the gateway's charge.dispute.created and charge.dispute.closed events.

Opened (the bank withdrew the funds): the purchase's unused credit is held (an ordinary ledger hold, key
`dispute:<id>`, so it cannot be spent) and the wallet's auto-recharge is switched off. Closed lost: the held
credit is written off to `chargeback_loss`. Closed won (or warning_closed: funds reinstated): the hold is
released. Out of order (closed before created) and duplicates are safe: the dispute is keyed on its gateway id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from credits import audit, config, money
from credits.ledger.refunds import _hold_for_dispute, _write_off_hold, _write_off_lot
from credits.ledger.service import _release
from credits.payments import auto_recharge
from credits.payments.models import Dispute

D: Table = Dispute.__table__  # type: ignore[assignment]
LOST = ("lost",)


def _purchase_of(session: Session, obj: dict[str, Any]) -> Row[Any] | None:
    from credits.payments.service import find_purchase

    intent_id = obj.get("payment_intent")
    if isinstance(intent_id, dict):
        intent_id = intent_id.get("id")
    purchase = find_purchase(session, intent_id if isinstance(intent_id, str) else None, None)
    if purchase is None or purchase.status != "succeeded" or purchase.lot_id is None:
        return None
    return purchase


def _amount(obj: dict[str, Any], purchase: Row[Any]) -> int:
    raw = obj.get("amount")
    minor = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else purchase.amount_minor
    return min(money.minor_to_micro(minor, purchase.currency), int(purchase.amount))


def opened(session: Session, obj: dict[str, Any], now: datetime) -> str:
    """charge.dispute.created: record the dispute, hold the purchase's unused credit, stop auto-recharge."""
    gateway_id = str(obj.get("id") or "")[:64]
    if not gateway_id:
        return "ignored"
    if session.execute(select(D.c.id).where(D.c.gateway_dispute_id == gateway_id)).first() is not None:
        return "already_known"
    purchase = _purchase_of(session, obj)
    if purchase is None:
        return "unknown_intent"
    amount = _amount(obj, purchase)
    dispute_id: int = session.execute(
        insert(D).values(purchase_id=purchase.id, gateway_dispute_id=gateway_id, status="open", amount=amount,
                         reason=str(obj.get("reason") or "")[:64] or None, held=0, written_off=0, created_at=now)
        .returning(D.c.id)
    ).scalar_one()
    held = _hold_for_dispute(session, purchase.lot_id, amount, now, key=f"dispute:{dispute_id}",
                             expires_at=now + timedelta(days=config.current().dispute_hold_days))
    session.execute(update(D).where(D.c.id == dispute_id).values(held=held))
    auto_recharge.stop_for_wallet(session, purchase.wallet_id, "dispute", now)
    audit.record(session, "gateway", "dispute.opened", f"purchase:{purchase.id}", dispute=dispute_id,
                 amount=money.format_micro(amount), held=money.format_micro(held))
    return "dispute_opened"


def closed(session: Session, obj: dict[str, Any], now: datetime) -> str:
    """charge.dispute.closed: lost writes the held credit off to chargeback_loss; won releases it."""
    gateway_id = str(obj.get("id") or "")[:64]
    lost = obj.get("status") in LOST
    row = session.execute(select(D).where(D.c.gateway_dispute_id == gateway_id).with_for_update()).first()
    if row is None:
        # Closed before we saw it open: nothing is held, so a loss comes straight out of the lot.
        purchase = _purchase_of(session, obj)
        if purchase is None:
            return "unknown_intent"
        amount = _amount(obj, purchase)
        dispute_id: int = session.execute(
            insert(D).values(purchase_id=purchase.id, gateway_dispute_id=gateway_id, status="lost" if lost else "won",
                             amount=amount, reason=str(obj.get("reason") or "")[:64] or None, held=0,
                             written_off=0, created_at=now, closed_at=now).returning(D.c.id)
        ).scalar_one()
        written = 0
        if lost:
            written = _write_off_lot(session, purchase.lot_id, amount, now, key=f"dispute:{dispute_id}:lost",
                                     actor="gateway")
            session.execute(update(D).where(D.c.id == dispute_id).values(written_off=written))
            auto_recharge.stop_for_wallet(session, purchase.wallet_id, "dispute", now)
        audit.record(session, "gateway", "dispute.closed", f"purchase:{purchase.id}", dispute=dispute_id,
                     status="lost" if lost else "won", written_off=money.format_micro(written))
        return "dispute_lost" if lost else "dispute_won"
    if row.status != "open":
        return "already_closed"
    written = 0
    if row.held:
        if lost:
            written = _write_off_hold(session, f"dispute:{row.id}", now, memo="chargeback lost", actor="gateway")
        else:
            _release(session, f"dispute:{row.id}", now)
    session.execute(update(D).where(D.c.id == row.id).values(
        status="lost" if lost else "won", closed_at=now, written_off=written))
    audit.record(session, "gateway", "dispute.closed", f"purchase:{row.purchase_id}", dispute=row.id,
                 status="lost" if lost else "won", written_off=money.format_micro(written))
    return "dispute_lost" if lost else "dispute_won"
