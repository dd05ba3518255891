"""The notification outbox: messages are written in the transaction that causes them, delivered by a job."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

OUTBOX_STATUSES = ("pending", "sent", "dead")


class OutboxMessage(Base):
    """One email to send. Recipient and template context are encrypted (associated data outbox.<col>.<id>)."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(f"status IN {OUTBOX_STATUSES!r}", name="status"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    recipient_enc: Mapped[str] = mapped_column(Text)
    context_enc: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Optional: the same key is queued once (a receipt per purchase, a reminder per lot and day).
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
