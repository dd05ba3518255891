"""Ledger invariant checks: what `flask ledger audit` runs and every randomized test asserts."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from credits.db import unit_of_work
from credits.ledger.models import Hold, JournalTransaction, Lot, Posting, Wallet

W: Table = Wallet.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
J: Table = JournalTransaction.__table__  # type: ignore[assignment]
P: Table = Posting.__table__  # type: ignore[assignment]
H: Table = Hold.__table__  # type: ignore[assignment]
LIMIT = 50


@dataclass
class AuditReport:
    checks: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self) -> str:
        if self.ok:
            return f"ledger audit: {self.checks} checks, no violations"
        lines = [f"ledger audit: {len(self.violations)} violation(s) in {self.checks} checks"]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


def _check_wallets(s: Session, report: AuditReport) -> None:
    lot_sums = select(L.c.wallet_id, func.sum(L.c.remaining).label("total")).group_by(L.c.wallet_id).subquery()
    post_sums = (
        select(P.c.wallet_id, func.sum(P.c.amount).label("total"))
        .where(P.c.wallet_id.is_not(None)).group_by(P.c.wallet_id).subquery()
    )
    hold_sums = (
        select(H.c.wallet_id, func.sum(H.c.amount).label("total"))
        .where(H.c.status == "active").group_by(H.c.wallet_id).subquery()
    )
    lots_total = func.coalesce(lot_sums.c.total, 0)
    posts_total = func.coalesce(post_sums.c.total, 0)
    held_total = func.coalesce(hold_sums.c.total, 0)
    rows = s.execute(
        select(W.c.account_number, W.c.balance, W.c.held, lots_total, posts_total, held_total)
        .outerjoin(lot_sums, lot_sums.c.wallet_id == W.c.id)
        .outerjoin(post_sums, post_sums.c.wallet_id == W.c.id)
        .outerjoin(hold_sums, hold_sums.c.wallet_id == W.c.id)
        .where((W.c.balance != lots_total) | (W.c.balance != posts_total) | (W.c.held != held_total)
               | (W.c.held > W.c.balance) | (W.c.balance < 0))
        .limit(LIMIT)
    ).all()
    report.checks += 5
    for number, bal, held, lots, posts, holds in rows:
        report.violations.append(
            f"wallet {number}: balance {bal}, sum of lots {lots}, sum of postings {posts}, "
            f"held {held}, active holds {holds}"
        )


def _check_next_expiry(s: Session, report: AuditReport) -> None:
    """`next_expiry_at` may be early (a harmless extra visit) but never late: the expiry job would skip lots."""
    report.checks += 1
    earliest = (
        select(L.c.wallet_id, func.min(L.c.expires_at).label("earliest"))
        .where(L.c.remaining > 0).group_by(L.c.wallet_id).subquery()
    )
    for number, next_expiry, first in s.execute(
        select(W.c.account_number, W.c.next_expiry_at, earliest.c.earliest)
        .join(earliest, earliest.c.wallet_id == W.c.id)
        .where(W.c.next_expiry_at.is_(None) | (W.c.next_expiry_at > earliest.c.earliest))
        .limit(LIMIT)
    ).all():
        report.violations.append(
            f"wallet {number}: next_expiry_at {next_expiry} is later than its earliest lot expiry {first}"
        )


def _check_transactions(s: Session, report: AuditReport) -> None:
    report.checks += 1
    for tx_id, total in s.execute(
        select(P.c.tx_id, func.sum(P.c.amount)).group_by(P.c.tx_id).having(func.sum(P.c.amount) != 0).limit(LIMIT)
    ).all():
        report.violations.append(f"journal transaction {tx_id} sums to {total}, not zero")
    report.checks += 1
    empty: list[int] = list(s.execute(
        select(J.c.id).where(~select(P.c.id).where(P.c.tx_id == J.c.id).exists()).limit(LIMIT)
    ).scalars().all())
    for tx_id in empty:
        report.violations.append(f"journal transaction {tx_id} has no postings")


def _check_lots(s: Session, report: AuditReport) -> None:
    report.checks += 2
    for lot_id, remaining, granted in s.execute(
        select(L.c.id, L.c.remaining, L.c.granted).where((L.c.remaining < 0) | (L.c.remaining > L.c.granted))
        .limit(LIMIT)
    ).all():
        report.violations.append(f"lot {lot_id}: remaining {remaining} outside 0..{granted}")
    moved = select(P.c.lot_id, func.sum(P.c.amount).label("total")).where(P.c.lot_id.is_not(None)).group_by(
        P.c.lot_id).subquery()
    for lot_id, remaining, total in s.execute(
        select(L.c.id, L.c.remaining, func.coalesce(moved.c.total, 0))
        .outerjoin(moved, moved.c.lot_id == L.c.id)
        .where(L.c.remaining != func.coalesce(moved.c.total, 0)).limit(LIMIT)
    ).all():
        report.violations.append(f"lot {lot_id}: remaining {remaining} but its postings sum to {total}")
    report.checks += 1
    for posting_id, lot_id, posted_to, owner in s.execute(
        select(P.c.id, P.c.lot_id, P.c.wallet_id, L.c.wallet_id).join(L, L.c.id == P.c.lot_id)
        .where((P.c.wallet_id.is_(None)) | (P.c.wallet_id != L.c.wallet_id)).limit(LIMIT)
    ).all():
        report.violations.append(f"posting {posting_id}: names lot {lot_id} of wallet {owner} but posts to {posted_to}")


def _check_holds(s: Session, report: AuditReport) -> None:
    report.checks += 1
    for hold_id, status, charged in s.execute(
        select(H.c.id, H.c.status, H.c.charged).where(
            ((H.c.status == "active") & (H.c.finished_at.is_not(None)))
            | ((H.c.status == "settled") & (H.c.charged.is_(None)))
            | ((H.c.status == "released") & (H.c.charged.is_not(None)))
            | ((H.c.status != "active") & (H.c.finished_at.is_(None)))
        ).limit(LIMIT)
    ).all():
        report.violations.append(f"hold {hold_id}: status {status} inconsistent (charged {charged})")


def run_audit() -> AuditReport:
    """Check every ledger invariant; return a report listing each violation (at most 50 per check)."""
    report = AuditReport()
    with unit_of_work() as uow:
        for check in (_check_wallets, _check_next_expiry, _check_transactions, _check_lots, _check_holds):
            check(uow.session, report)
        from credits import extensions

        for extra in extensions.audit_checks():
            report.checks += 1
            report.violations.extend(extra(uow.session))
    return report
