"""Append-only, hash-chained audit log of who did what (money corrections, staff reads, security events)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, Table, Text, insert, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from credits import clock
from credits.db import Base, BigInt, UTCDateTime, unit_of_work

GENESIS = "0" * 64


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(100), default="")
    #: JSON; never personal data in clear (ids, reasons, amounts).
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


A: Table = AuditEntry.__table__  # type: ignore[assignment]


def _digest(prev: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    material = json.dumps([prev, at.isoformat(), actor, action, subject, detail], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def record(session: Session, actor: str, action: str, subject: str = "", **detail: Any) -> str:
    """Append an entry in the caller's transaction; return its hash. Serialised so the chain never forks."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7201)"))
    prev = session.execute(select(A.c.hash).order_by(A.c.id.desc()).limit(1)).scalar() or GENESIS
    at = clock.now()
    body = json.dumps(detail, sort_keys=True, default=str)
    digest = _digest(prev, at, actor, action, subject, body)
    session.execute(insert(A).values(at=at, actor=actor, action=action, subject=subject, detail=body,
                                     prev_hash=prev, hash=digest))
    return digest


@dataclass
class ChainReport:
    entries: int
    broken_at: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify() -> ChainReport:
    """Walk the chain in id order; report the first entry whose link or hash does not match."""
    prev = GENESIS
    count = 0
    with unit_of_work() as uow:
        for row in uow.session.execute(select(A).order_by(A.c.id)).yield_per(1000):
            count += 1
            if row.prev_hash != prev:
                return ChainReport(count, row.id, "link to the previous entry does not match")
            if _digest(prev, row.at, row.actor, row.action, row.subject, row.detail) != row.hash:
                return ChainReport(count, row.id, "entry was altered")
            prev = row.hash
    return ChainReport(count, None)
