"""Customer security reports (CHECKLIST P104, P105): "my account is compromised" and "these transactions were
not mine"; the money freeze they can set, and the staff side (queue, resolve, unfreeze).

Each use case is one transaction: the report, its linked ledger entries, the revocations and the freeze, the
security event, the audit entry and the acknowledgement email commit together or not at all.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, and_, func, insert, select, update
from sqlalchemy.orm import Session

from credits import audit, clock, crypto
from credits import logging as logs
from credits.accounts.models import EmailToken, User
from credits.db import unit_of_work
from credits.errors import Conflict, MoneyFrozen, NotFound, ValidationError
from credits.ledger.models import JournalTransaction, Posting, Wallet
from credits.notify import notices
from credits.security import events, links
from credits.security.models import REPORT_KINDS, REPORT_STATUSES, SecurityReport, SecurityReportEntry

R: Table = SecurityReport.__table__  # type: ignore[assignment]
RE: Table = SecurityReportEntry.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]
W: Table = Wallet.__table__  # type: ignore[assignment]
J: Table = JournalTransaction.__table__  # type: ignore[assignment]
P: Table = Posting.__table__  # type: ignore[assignment]
T: Table = EmailToken.__table__  # type: ignore[assignment]

#: Without a time from the customer, a compromise report links the ledger entries of this period.
DEFAULT_LOOKBACK = timedelta(days=30)
#: A report can reach this far back; older activity goes through support.
MAX_LOOKBACK = timedelta(days=400)
#: Linked entries per report (the newest); support sees the rest in the statement.
MAX_ENTRIES = 1000
MAX_TX_IDS = 100
DESCRIPTION_MAX = 2000
REASON_MAX = 500
#: The answer promised to the customer (the operator's 15-day promise for complaints).
ANSWER_WITHIN = timedelta(days=15)
#: Outstanding email tokens a compromise report cancels (an attacker may have started them).
CANCELLED_TOKENS = ("reset_password", "change_email", "pay_link")
_REFERENCE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


@dataclass(frozen=True)
class ReportView:
    id: int
    reference: str
    kind: str
    user_id: int
    created_at: datetime
    since: datetime | None
    status: str
    froze_money: bool
    tx_ids: list[int] = field(default_factory=list)
    description: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None
    account_number: str | None = None

    @property
    def answer_by(self) -> datetime:
        return self.created_at + ANSWER_WITHIN


@dataclass(frozen=True)
class ReportPage:
    reports: list[ReportView]
    next_cursor: str | None


# ---------------------------------------------------------------- checks used by other features


def money_frozen(session: Session, user_id: int) -> bool:
    """True when the user's money movement is frozen (security report, until staff unfreeze it)."""
    return session.execute(select(U.c.money_frozen_at).where(U.c.id == user_id)).scalar() is not None


def check_money_movement(session: Session, user_id: int) -> None:
    """Raise MoneyFrozen when the user's money movement is frozen. Payments call it before a purchase with a
    saved card and before each auto-recharge; the ledger checks transfers itself."""
    if money_frozen(session, user_id):
        raise MoneyFrozen("money movement on this account is frozen after a security report; contact support")


# ---------------------------------------------------------------- helpers


def _new_reference(session: Session) -> str:
    while True:
        body = "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(8))
        reference = f"SR-{body[:4]}-{body[4:]}"
        if session.execute(select(R.c.id).where(R.c.reference == reference)).scalar() is None:
            return reference


def _check_text(value: object, name: str, *, required: bool, maximum: int) -> str | None:
    """A free-text field: stripped, 1-`maximum` characters, no control characters but line breaks and tabs."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValidationError(f"{name} is required", field=name)
        return None
    if not isinstance(value, str) or len(value) > maximum:
        raise ValidationError(f"{name} is 1-{maximum} characters", field=name)
    if any((ord(ch) < 32 and ch not in "\n\r\t") or ord(ch) == 127 for ch in value):
        raise ValidationError(f"{name} holds control characters", field=name)
    return value.strip()


def _check_since(since: object, now: datetime) -> datetime | None:
    if since is None:
        return None
    if not isinstance(since, datetime) or since.tzinfo is None:
        raise ValidationError("since is a time with a timezone", field="since")
    if since > now:
        raise ValidationError("since is in the future", field="since")
    if since < now - MAX_LOOKBACK:
        raise ValidationError("since is too far back; contact support for older activity", field="since")
    return since


def _wallet_of(session: Session, user_id: int) -> int | None:
    return session.execute(select(W.c.id).where(W.c.user_id == user_id)).scalar()


def _tx_since(session: Session, wallet_id: int | None, since: datetime) -> list[int]:
    if wallet_id is None:
        return []
    rows: Sequence[Any] = session.execute(
        select(P.c.tx_id).join(J, J.c.id == P.c.tx_id)
        .where(P.c.wallet_id == wallet_id, J.c.created_at >= since)
        .group_by(P.c.tx_id).order_by(P.c.tx_id.desc()).limit(MAX_ENTRIES)
    ).scalars().all()
    return sorted(int(t) for t in rows)


def _check_tx_ids(session: Session, wallet_id: int | None, tx_ids: object) -> list[int]:
    if tx_ids is None:
        return []
    if (not isinstance(tx_ids, (list, tuple)) or len(tx_ids) > MAX_TX_IDS
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t < 2**63 for t in tx_ids)):
        raise ValidationError(f"tx_ids is a list of at most {MAX_TX_IDS} transaction ids", field="tx_ids")
    wanted: list[int] = sorted({int(t) for t in tx_ids})
    if not wanted:
        return []
    mine: set[int] = set()
    if wallet_id is not None:
        found: Sequence[Any] = session.execute(
            select(P.c.tx_id).where(P.c.wallet_id == wallet_id, P.c.tx_id.in_(wanted)).distinct()
        ).scalars().all()
        mine = {int(t) for t in found}
    foreign = [t for t in wanted if t not in mine]
    if foreign:
        # The same answer for "no such transaction" and "someone else's": ids of others are not confirmed.
        raise ValidationError(f"not transactions of your account: {', '.join(map(str, foreign[:10]))}",
                              field="tx_ids")
    return wanted


def _lock_user(session: Session, user_id: int) -> None:
    query = select(U.c.id).where(U.c.id == user_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    if session.execute(query).scalar() is None:
        raise NotFound("no such account")


def _freeze(session: Session, user_id: int, reason: str, now: datetime) -> None:
    # The first freeze's time and reason stay: support wants to know since when.
    session.execute(update(U).where(U.c.id == user_id, U.c.money_frozen_at.is_(None))
                    .values(money_frozen_at=now, money_frozen_reason=reason[:200]))


def _file(session: Session, *, kind: str, user_id: int, now: datetime, since: datetime | None,
          description: str | None, froze_money: bool, tx_ids: Sequence[int]) -> ReportView:
    reference = _new_reference(session)
    report_id: int = session.execute(
        insert(R).values(reference=reference, kind=kind, user_id=user_id, created_at=now, since=since, status="open",
                         froze_money=froze_money).returning(R.c.id)
    ).scalar_one()
    if description is not None:
        session.execute(update(R).where(R.c.id == report_id).values(
            description_enc=crypto.encrypt(description, "security_reports", "description_enc", report_id)))
    if tx_ids:
        session.execute(insert(RE), [{"report_id": report_id, "tx_id": t} for t in tx_ids])
    return ReportView(report_id, reference, kind, user_id, now, since, "open", froze_money, list(tx_ids), description)


def _detail(**values: object) -> str:
    parts = [f"{k}={v}" for k, v in values.items() if v is not None]
    request_id = logs.current_request_id()
    if request_id:
        parts.append(f"request={request_id}")
    return " ".join(parts)


# ---------------------------------------------------------------- P104: compromise report


def _report_compromise(session: Session, user_id: int, *, since: datetime | None, description: str | None,
                       ip: str | None, via: str) -> ReportView:
    now = clock.now()
    _lock_user(session, user_id)
    lookback = since or now - DEFAULT_LOOKBACK
    tx_ids = _tx_since(session, _wallet_of(session, user_id), lookback)
    report = _file(session, kind="compromise", user_id=user_id, now=now, since=lookback, description=description,
                   froze_money=True, tx_ids=tx_ids)
    from credits.accounts import sessions

    revoked = sessions.revoke_all_in(session, user_id)
    session.execute(update(T).where(T.c.user_id == user_id, T.c.purpose.in_(CANCELLED_TOKENS),
                                    T.c.used_at.is_(None)).values(used_at=now))
    _freeze(session, user_id, f"compromise report {report.reference}", now)
    session.execute(update(U).where(U.c.id == user_id).values(reset_required=True))
    events.record(session, "compromise_reported", user_id=user_id, ip=ip,
                  detail=_detail(outcome="ok", reference=report.reference, via=via, sessions_revoked=revoked,
                                 entries=len(tx_ids)))
    audit.record(session, f"user:{user_id}", "security.compromise_reported", f"user:{user_id}",
                 reference=report.reference, via=via, sessions_revoked=revoked, entries=len(tx_ids),
                 froze_money=True, request_id=logs.current_request_id())
    notices.notify(session, user_id, "compromise_report", reference=report.reference, since=lookback)
    return report


def report_compromise(user_id: int, *, since: datetime | None = None, description: str | None = None,
                      ip: str | None = None) -> ReportView:
    """Report the account compromised, signed in (from the security settings).

    In one transaction: every session and API token of the user revoked; pending reset, email-change and pay
    links cancelled; money movement frozen (transfers, purchases with saved cards, auto-recharge; calls go
    on); a password reset required at the next sign-in; the ledger entries since `since` (default: 30 days
    back) linked to the report for support; a security event, an audit entry and an acknowledgement email.
    Returns the report with its reference. Raises ValidationError (since in the future or over 400 days back,
    description over 2000 characters or with control characters), NotFound.
    """
    now = clock.now()
    since = _check_since(since, now)
    text = _check_text(description, "description", required=False, maximum=DESCRIPTION_MAX)
    with unit_of_work() as uow:
        report = _report_compromise(uow.session, user_id, since=since, description=text, ip=ip, via="settings")
        uow.commit()
        return report


def report_compromise_with_link(token: object, *, since: datetime | None = None, description: str | None = None,
                                ip: str | None = None) -> ReportView:
    """Report the account compromised, signed out, with the token of a "this wasn't me" link (used up).

    Does what `report_compromise` does. Raises InvalidLink (unknown, used or expired token), ValidationError;
    nothing changes on any error, and the token stays usable after a ValidationError.
    """
    now = clock.now()
    since = _check_since(since, now)
    text = _check_text(description, "description", required=False, maximum=DESCRIPTION_MAX)
    with unit_of_work() as uow:
        user_id = links.take(uow.session, token)
        report = _report_compromise(uow.session, user_id, since=since, description=text, ip=ip, via="link")
        uow.commit()
        return report


def check_link(token: object) -> None:
    """Raise InvalidLink unless `token` is a live "this wasn't me" token (the signed-out page shows its form)."""
    with unit_of_work() as uow:
        links.check(uow.session, token)


# ---------------------------------------------------------------- P105: unauthorised transactions


def report_unauthorized(user_id: int, *, description: str, since: datetime | None = None,
                        tx_ids: Sequence[int] | None = None, freeze: bool = False,
                        ip: str | None = None) -> ReportView:
    """Report transactions the customer did not make: a case with a reference, for support's queue.

    Links the named transactions (`tx_ids`, which must be the customer's own) and every entry since `since`;
    at least one of the two is needed. With `freeze`, money movement stops until staff unfreeze it. Sends an
    acknowledgement with the reference and the date by which support answers (15 days: the complaint clock
    starts at `created_at`). Raises ValidationError (nothing changes), NotFound.
    """
    now = clock.now()
    since = _check_since(since, now)
    text = _check_text(description, "description", required=True, maximum=DESCRIPTION_MAX)
    if not isinstance(freeze, bool):
        raise ValidationError("freeze is true or false", field="freeze")
    if since is None and not tx_ids:
        raise ValidationError("name the transactions (tx_ids) or the time they started (since)", field="tx_ids")
    with unit_of_work() as uow:
        s = uow.session
        _lock_user(s, user_id)
        wallet_id = _wallet_of(s, user_id)
        named = _check_tx_ids(s, wallet_id, tx_ids)
        linked = sorted(set(named) | set(_tx_since(s, wallet_id, since) if since else []))
        report = _file(s, kind="unauthorized_transactions", user_id=user_id, now=now, since=since,
                       description=text, froze_money=freeze, tx_ids=linked)
        if freeze:
            _freeze(s, user_id, f"unauthorised-transaction report {report.reference}", now)
        events.record(s, "unauthorized_transactions_reported", user_id=user_id, ip=ip,
                      detail=_detail(outcome="ok", reference=report.reference, entries=len(linked), freeze=freeze))
        audit.record(s, f"user:{user_id}", "security.unauthorized_transactions_reported", f"user:{user_id}",
                     reference=report.reference, entries=len(linked), froze_money=freeze,
                     request_id=logs.current_request_id())
        notices.notify(s, user_id, "unauthorized_transaction_report", reference=report.reference,
                       entries=len(linked), froze_money=freeze, answer_by=report.answer_by, since=since)
        uow.commit()
        return report


# ---------------------------------------------------------------- reading reports


def _views(session: Session, rows: Sequence[Any], *, with_description: bool) -> list[ReportView]:
    ids = [int(r.id) for r in rows]
    entries: dict[int, list[int]] = {i: [] for i in ids}
    if ids:
        pairs: Sequence[Any] = session.execute(
            select(RE.c.report_id, RE.c.tx_id).where(RE.c.report_id.in_(ids)).order_by(RE.c.tx_id)
        ).all()
        for report_id, tx_id in pairs:
            entries[int(report_id)].append(int(tx_id))
    out = []
    for r in rows:
        description = None
        if with_description:
            description = crypto.decrypt(r.description_enc, "security_reports", "description_enc", r.id)
        out.append(ReportView(r.id, r.reference, r.kind, r.user_id, r.created_at, r.since, r.status, r.froze_money,
                              entries[r.id], description, r.resolved_at, r.resolution, r.account_number))
    return out


def _report_query() -> Select[Any]:
    return select(R, W.c.account_number).select_from(R.outerjoin(W, W.c.user_id == R.c.user_id))


def reports_of(user_id: int) -> list[ReportView]:
    """The customer's own reports, newest first (with their descriptions: they wrote them)."""
    with unit_of_work() as uow:
        rows = uow.session.execute(_report_query().where(R.c.user_id == user_id).order_by(R.c.id.desc())).all()
        return _views(uow.session, rows, with_description=True)


def queue(*, status: str | None = "open", kind: str | None = None, after: str | None = None,
          limit: int = 50) -> ReportPage:
    """Support's queue: reports oldest first (the one nearest its answer date on top), without descriptions
    (reading one is `get_report`, audit-logged). Keyset-paginated with `after`. Raises ValidationError."""
    if status is not None and status not in REPORT_STATUSES:
        raise ValidationError(f"status is one of {', '.join(REPORT_STATUSES)}", field="status")
    if kind is not None and kind not in REPORT_KINDS:
        raise ValidationError(f"kind is one of {', '.join(REPORT_KINDS)}", field="kind")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
        raise ValidationError("limit is between 1 and 200", field="limit")
    cursor = None
    if after is not None:
        if not (isinstance(after, str) and after.isascii() and after.isdigit() and len(after) <= 18):
            raise ValidationError("invalid cursor", field="after")
        cursor = int(after)
    query = _report_query().order_by(R.c.id).limit(limit + 1)
    conditions = []
    if status is not None:
        conditions.append(R.c.status == status)
    if kind is not None:
        conditions.append(R.c.kind == kind)
    if cursor is not None:
        conditions.append(R.c.id > cursor)
    if conditions:
        query = query.where(and_(*conditions))
    with unit_of_work() as uow:
        rows = uow.session.execute(query).all()
        views = _views(uow.session, rows[:limit], with_description=False)
    return ReportPage(views, str(views[-1].id) if len(rows) > limit else None)


def get_report(reference: str, *, staff_id: int) -> ReportView:
    """One report with its description, for staff; the read is audit-logged. Raises NotFound."""
    with unit_of_work() as uow:
        row = uow.session.execute(_report_query().where(R.c.reference == str(reference)[:24])).first()
        if row is None:
            raise NotFound("no such report")
        view = _views(uow.session, [row], with_description=True)[0]
        audit.record(uow.session, f"user:{staff_id}", "security.report_read", f"user:{view.user_id}",
                     reference=view.reference, request_id=logs.current_request_id())
        uow.commit()
        return view


def resolve(reference: str, *, resolution: str, staff_id: int) -> ReportView:
    """Close a report with what was done (audit-logged). Raises ValidationError, NotFound, Conflict (closed)."""
    text = _check_text(resolution, "resolution", required=True, maximum=REASON_MAX)
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        row = s.execute(select(R.c.id, R.c.status, R.c.user_id).where(R.c.reference == str(reference)[:24])).first()
        if row is None:
            raise NotFound("no such report")
        if row.status != "open":
            raise Conflict("this report is already resolved")
        s.execute(update(R).where(R.c.id == row.id).values(status="resolved", resolved_at=now, resolved_by=staff_id,
                                                          resolution=text))
        audit.record(s, f"user:{staff_id}", "security.report_resolved", f"user:{row.user_id}",
                     reference=reference, resolution=text, request_id=logs.current_request_id())
        found = s.execute(_report_query().where(R.c.id == row.id)).one()
        view = _views(s, [found], with_description=False)[0]
        uow.commit()
        return view


# ---------------------------------------------------------------- staff: unfreeze


@dataclass(frozen=True)
class UnfreezeResult:
    user_id: int
    frozen_at: datetime
    reason: str | None
    unfrozen_at: datetime


def unfreeze(user_id: int, *, reason: str, staff_id: int, ip: str | None = None) -> UnfreezeResult:
    """Let money move again on a frozen account, with the staff member's reason (audit-logged, security event).

    Does not clear `reset_required` (the customer still sets a new password) nor close reports.
    Raises ValidationError (reason 1-500 characters), NotFound, Conflict (not frozen).
    """
    text = _check_text(reason, "reason", required=True, maximum=REASON_MAX)
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        _lock_user(s, user_id)
        row = s.execute(select(U.c.money_frozen_at, U.c.money_frozen_reason).where(U.c.id == user_id)).one()
        if row.money_frozen_at is None:
            raise Conflict("money movement on this account is not frozen")
        s.execute(update(U).where(U.c.id == user_id).values(money_frozen_at=None, money_frozen_reason=None))
        audit.record(s, f"user:{staff_id}", "account.unfreeze", f"user:{user_id}", reason=text,
                     frozen_at=row.money_frozen_at, frozen_reason=row.money_frozen_reason,
                     request_id=logs.current_request_id())
        events.record(s, "money_unfrozen", user_id=user_id, ip=ip, detail=_detail(outcome="ok", by=f"user:{staff_id}"))
        uow.commit()
        return UnfreezeResult(user_id, row.money_frozen_at, row.money_frozen_reason, now)


def open_report_count() -> int:
    with unit_of_work() as uow:
        return int(uow.session.execute(select(func.count()).select_from(R).where(R.c.status == "open")).scalar_one())
