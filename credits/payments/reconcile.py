"""Reconciliation: settle payments left open, compare the gateway with the ledger, audit grants.

- `run()` is the `reconcile-payments` job: purchases still pending, processing or requires_action
  CREDITS_RECONCILE_AFTER_MINUTES after they were made are settled from the gateway (an intent whose answer
  was lost is found by the purchase id in its metadata); 3-D Secure never completed within
  CREDITS_REQUIRES_ACTION_EXPIRY_HOURS marks the purchase failed (a late success still grants); refunds the
  gateway did not answer are sent again with their key; forgotten and removed cards are detached.
- `report()` backs `flask --app wsgi payments reconcile-report`: every succeeded intent at the gateway
  against the purchases and lots here, listing each mismatch.
- `check_grants` is a ledger audit check (registered by credits.payments.jobs): every succeeded purchase granted
  exactly once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, Table, cast, func, literal, select, update
from sqlalchemy.orm import Session

from credits import clock, config, money
from credits.db import unit_of_work
from credits.ledger.models import JournalTransaction, Lot
from credits.payments import cards, provider, refunds, service
from credits.payments.errors import GatewayError
from credits.payments.models import Purchase

log = logging.getLogger(__name__)

PU: Table = Purchase.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
J: Table = JournalTransaction.__table__  # type: ignore[assignment]
LIMIT = 50


def stuck_purchases(now: datetime, limit: int = 200) -> list[int]:
    older = now - timedelta(minutes=config.current().reconcile_after_minutes)
    with unit_of_work() as uow:
        return list(uow.session.execute(
            select(PU.c.id).where(PU.c.status.in_(service.OPEN), PU.c.updated_at <= older)
            .order_by(PU.c.id).limit(limit)
        ).scalars().all())


def _expire_requires_action(purchase_id: int, now: datetime) -> bool:
    """Give up on 3-D Secure left undone for too long; True when the purchase was marked failed."""
    limit = now - timedelta(hours=config.current().requires_action_expiry_hours)
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id).with_for_update()).one()
        if row.status != "requires_action" or row.created_at > limit:
            return False
        uow.session.execute(update(PU).where(PU.c.id == purchase_id).values(
            status="failed", failure_code="authentication_abandoned", settled_at=now, updated_at=now))
        service._after_status(uow.session, purchase_id, now, "requires_action")
        uow.commit()
    return True


def _give_up_lost(purchase_id: int, now: datetime) -> None:
    """A pending purchase with no intent at the gateway: the charge never happened; mark it failed."""
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id).with_for_update()).one()
        if row.status in ("pending", "processing") and row.payment_intent_id is None:
            uow.session.execute(update(PU).where(PU.c.id == purchase_id).values(
                status="failed", failure_code="no_intent", settled_at=now, updated_at=now))
            service._after_status(uow.session, purchase_id, now, row.status)
        uow.commit()


def settle_stuck(now: datetime | None = None) -> dict[str, int]:
    """Settle every purchase open beyond the reconciliation age; return counts by resulting status."""
    now = now or clock.now()
    counts: Counter[str] = Counter()
    for purchase_id in stuck_purchases(now):
        try:
            before = service.view(purchase_id)
            after = service.settle(purchase_id)
            if after.status == before.status and after.payment_intent_id is None:
                _give_up_lost(purchase_id, now)
                after = service.view(purchase_id)
            if after.status == "requires_action" and _expire_requires_action(purchase_id, now):
                after = service.view(purchase_id)
            touch(purchase_id, now)
            counts[after.status] += 1
        except GatewayError as exc:
            log.warning("reconciling purchase %s: %s", purchase_id, exc.code)
            counts["gateway_error"] += 1
    return dict(counts)


def touch(purchase_id: int, now: datetime) -> None:
    """Push an open purchase's `updated_at` so the next run looks at it again only after the age passes."""
    with unit_of_work() as uow:
        uow.session.execute(update(PU).where(PU.c.id == purchase_id, PU.c.status.in_(service.OPEN))
                            .values(updated_at=now))
        uow.commit()


def run() -> dict[str, Any]:
    """The `reconcile-payments` job."""
    now = clock.now()
    result: dict[str, Any] = {"purchases": settle_stuck(now)}
    result["refunds_retried"] = refunds.retry_stuck(now)
    result["cards_abandoned"] = cards.abandon_stale_setups(now)
    result["cards_detached"] = cards.detach_pending()
    return result


# ---------------------------------------------------------------- report


@dataclass
class ReconcileReport:
    since: datetime
    intents: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def text(self) -> str:
        head = f"reconcile-report since {self.since.isoformat()}: {self.intents} succeeded intents at the gateway"
        if self.ok:
            return head + ", no mismatch"
        return "\n".join([head + f", {len(self.mismatches)} mismatch(es)"] + [f"  - {m}" for m in self.mismatches])


def report(since: datetime, *, limit: int = 1000) -> ReconcileReport:
    """Compare the gateway's succeeded intents since `since` with purchases and granted lots here.

    Lists: succeeded intents with no purchase, or whose purchase has no lot or a lot of another amount;
    purchases granted here whose intent the gateway does not show as succeeded. Raises gateway errors.
    """
    result = ReconcileReport(since)
    intents = provider.gateway().list_payment_intents(created_after=since, limit=limit)
    succeeded = {i.id: i for i in intents if i.status == "succeeded"}
    listed = {i.id: i for i in intents}
    result.intents = len(succeeded)
    with unit_of_work() as uow:
        s = uow.session
        rows = s.execute(
            select(PU, L.c.granted.label("lot_granted"))
            .outerjoin(L, L.c.id == PU.c.lot_id)
            .where((PU.c.payment_intent_id.in_(list(listed))) | (PU.c.created_at >= since))
        ).all()
    by_intent = {r.payment_intent_id: r for r in rows if r.payment_intent_id}
    for intent in succeeded.values():
        row = by_intent.get(intent.id)
        amount = money.format_display(money.minor_to_micro(intent.amount_minor, intent.currency), intent.currency) \
            if money.is_known_currency(intent.currency) else f"{intent.amount_minor} {intent.currency}"
        if row is None:
            meta = dict(intent.metadata).get("purchase_id")
            result.mismatches.append(f"intent {intent.id} ({amount}) succeeded but no purchase records it"
                                     + (f" (metadata purchase {meta})" if meta else ""))
        elif row.lot_id is None:
            result.mismatches.append(f"intent {intent.id} ({amount}) succeeded but purchase {row.id} is {row.status}"
                                     " with no credit granted")
        elif row.lot_granted != row.amount or row.amount_minor != intent.amount_minor:
            result.mismatches.append(f"intent {intent.id} ({amount}): purchase {row.id} granted {row.lot_granted}"
                                     f" micro-units for {row.amount_minor} minor units")
    for row in rows:
        if row.lot_id is not None and row.payment_intent_id not in succeeded:
            state = listed[row.payment_intent_id].status if row.payment_intent_id in listed else "not listed"
            result.mismatches.append(f"purchase {row.id} granted lot {row.lot_id} but its intent "
                                     f"{row.payment_intent_id} is {state} at the gateway")
    return result


# ---------------------------------------------------------------- ledger audit


def check_grants(session: Session) -> list[str]:
    """Every succeeded purchase granted exactly once: one lot, of its amount and source, from one grant
    keyed on its intent; no other lot claims the purchase; no purchase that did not succeed holds a lot."""
    problems: list[str] = []
    lot_source = func.coalesce(L.c.source, "")
    for row in session.execute(
        select(PU.c.id, PU.c.status, PU.c.amount, PU.c.kind, PU.c.payment_intent_id, L.c.granted, lot_source,
               L.c.reference, J.c.idempotency_key)
        .outerjoin(L, L.c.id == PU.c.lot_id).outerjoin(J, J.c.id == L.c.grant_tx_id)
        .where((PU.c.status == "succeeded") | PU.c.lot_id.is_not(None))
        .where((PU.c.status != "succeeded") | PU.c.lot_id.is_(None) | (L.c.granted != PU.c.amount)
               | (lot_source != PU.c.kind) | (L.c.reference != literal("purchase:") + cast(PU.c.id, String))
               | (J.c.idempotency_key != literal("payment_intent:") + PU.c.payment_intent_id))
        .limit(LIMIT)
    ).all():
        problems.append(f"purchase {row.id} ({row.status}) and its grant disagree: lot granted {row.granted}, "
                        f"amount {row.amount}, source {row[6]!r}, reference {row.reference!r}, key "
                        f"{row.idempotency_key!r}")
    for reference, count in session.execute(
        select(L.c.reference, func.count()).where(L.c.reference.like("purchase:%"), L.c.source.in_(
            ("purchase", "auto_recharge"))).group_by(L.c.reference).having(func.count() > 1).limit(LIMIT)
    ).all():
        problems.append(f"{reference} was granted {count} lots")
    for lot_id, reference in session.execute(
        select(L.c.id, L.c.reference).outerjoin(PU, PU.c.lot_id == L.c.id)
        .where(L.c.source.in_(("purchase", "auto_recharge")), L.c.reference.like("purchase:%"), PU.c.id.is_(None))
        .limit(LIMIT)
    ).all():
        problems.append(f"lot {lot_id} claims {reference} but that purchase does not name it")
    return problems
