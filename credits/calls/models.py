"""Caller numbers (how the switch names a wallet) and call records (traffic data, kept for billing)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

CALL_STATUSES = ("authorized", "completed", "abandoned")
DISPOSITIONS = ("answered", "no_answer", "busy", "failed", "cancelled")
#: Why an authorisation is refused (the switch API's `reason`); here, not in the service, so that the API schema
#: names them without importing the charging code.
REFUSALS = ("insufficient_credit", "unknown_caller", "no_rate", "account_frozen", "account_closed", "too_many_calls")


class CallerNumber(Base):
    """A phone number registered to a wallet (E.164 with '+'), unique across all accounts.

    Stored encrypted (caller_numbers.number_enc.<id>); the switch finds it by its blind index.
    """

    __tablename__ = "caller_numbers"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), index=True)
    number_enc: Mapped[str] = mapped_column(Text)
    number_bidx: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Call(Base):
    """One call as the switch reported it, with the rate used (a snapshot) and what it cost."""

    __tablename__ = "calls"
    __table_args__ = (
        CheckConstraint(f"status IN {CALL_STATUSES!r}", name="status"),
        CheckConstraint(f"disposition IS NULL OR disposition IN {DISPOSITIONS!r}", name="disposition"),
        CheckConstraint("duration_s IS NULL OR (duration_s >= 0 AND duration_s <= 86400)", name="duration"),
        Index("ix_calls_wallet_id_id", "wallet_id", "id"),
        Index("ix_calls_status_authorized_at", "status", "authorized_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    call_id: Mapped[str] = mapped_column(String(128), unique=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"), index=True)
    source: Mapped[str] = mapped_column(String(8), default="switch")
    caller: Mapped[str] = mapped_column(String(21))
    callee: Mapped[str] = mapped_column(String(21))
    status: Mapped[str] = mapped_column(String(16))
    authorized_at: Mapped[datetime] = mapped_column(UTCDateTime)
    max_duration_s: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(BigInt, default=0)
    # Rate snapshot: what the call was rated with, whatever the plan says later.
    rate_prefix: Mapped[str] = mapped_column(String(20))
    rate_destination: Mapped[str] = mapped_column(String(120))
    rate_per_minute: Mapped[int] = mapped_column(BigInt)
    connect_fee: Mapped[int] = mapped_column(BigInt)
    first_increment_s: Mapped[int] = mapped_column(Integer)
    next_increment_s: Mapped[int] = mapped_column(Integer)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_s: Mapped[int | None] = mapped_column(Integer)
    billed_s: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[int | None] = mapped_column(BigInt)
    charged: Mapped[int | None] = mapped_column(BigInt)
    disposition: Mapped[str | None] = mapped_column(String(16))
    end_reason: Mapped[str | None] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_reason: Mapped[str | None] = mapped_column(String(64))
