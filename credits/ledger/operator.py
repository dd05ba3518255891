"""Operator and staff money corrections on the ledger, each audit-logged in the same transaction."""

from __future__ import annotations

from datetime import datetime

from credits import audit, clock, money
from credits.db import unit_of_work
from credits.errors import ValidationError
from credits.ledger.service import LotView, _grant, _resolve_wallet


def grant_by_operator(
    account: str,
    amount: str,
    reason: str,
    *,
    expires_at: datetime | None = None,
    source: str = "credit_note",
    actor: str = "operator:cli",
) -> LotView:
    """Grant goodwill credit (`credit_note` or `promo`) to an account named by email or account number.

    `amount` is a decimal string in the wallet's currency. A non-empty reason is required and is kept in the
    journal memo and the audit log. Raises ValidationError and NotFound.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("a reason is required", field="reason")
    if source not in ("credit_note", "promo"):
        raise ValidationError("operator grants are credit_note or promo", field="source")
    with unit_of_work() as uow:
        wallet = _resolve_wallet(uow.session, account)
        micro = money.parse_amount(amount, wallet.currency)
        result = _grant(uow.session, wallet.id, micro, source, clock.now(), expires_at=expires_at,
                        memo=reason[:200], actor=actor)
        audit.record(uow.session, actor, "ledger.grant", f"wallet:{wallet.id}", lot=result.lot.id,
                     amount=money.format_micro(micro), source=source, reason=reason[:500])
        uow.commit()
        return result.lot
