"""Security events (sign-ins, failures, MFA and password changes) and customer security reports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

REPORT_KINDS = ("compromise", "unauthorized_transactions")
REPORT_STATUSES = ("open", "resolved")


class SecurityEvent(Base):
    """One security-relevant event, as a row (CHECKLIST O101). No secrets, no full addresses."""

    __tablename__ = "security_events"
    __table_args__ = (Index("ix_security_events_user_id_at", "user_id", "at"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(48), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(500), default="")


class SecurityReport(Base):
    """A customer's report that their account was compromised or that transactions were not theirs."""

    __tablename__ = "security_reports"
    __table_args__ = (
        CheckConstraint(f"kind IN {REPORT_KINDS!r}", name="kind"),
        CheckConstraint(f"status IN {REPORT_STATUSES!r}", name="status"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    reference: Mapped[str] = mapped_column(String(24), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: From when the customer says things went wrong; ledger entries since then are linked for support.
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")
    froze_money: Mapped[bool] = mapped_column(Boolean, default=False)
    description_enc: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    resolution: Mapped[str | None] = mapped_column(String(500))


class SecurityReportEntry(Base):
    """A ledger transaction a report points support at."""

    __tablename__ = "security_report_entries"

    report_id: Mapped[int] = mapped_column(ForeignKey("security_reports.id", ondelete="CASCADE"), primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("journal_transactions.id"), primary_key=True)
