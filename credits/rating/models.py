"""Rate plan tables: a plan (currency, version) and its rates, one row per prefix and effective date."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

#: The plan that rates a wallet without a plan of its own (`Wallet.rate_plan_id` None), by name; it rates only
#: wallets of its own currency.
DEFAULT_PLAN = "default"


class RatePlan(Base):
    __tablename__ = "rate_plans"
    __table_args__ = (CheckConstraint("length(currency) = 3", name="currency_code"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    #: Bumped on every import, so that processes drop their cached prefix table.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RateRow(Base):
    __tablename__ = "rates"
    __table_args__ = (
        CheckConstraint("rate_per_minute >= 0", name="rate_nonnegative"),
        CheckConstraint("connect_fee >= 0", name="connect_fee_nonnegative"),
        CheckConstraint("first_increment_s >= 1", name="first_increment_positive"),
        CheckConstraint("next_increment_s >= 1", name="next_increment_positive"),
        UniqueConstraint("plan_id", "prefix", "effective_from", name="uq_rates_plan_prefix_effective"),
        Index("ix_rates_plan_id", "plan_id"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("rate_plans.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(20))
    destination: Mapped[str] = mapped_column(String(120))
    rate_per_minute: Mapped[int] = mapped_column(BigInt)
    connect_fee: Mapped[int] = mapped_column(BigInt)
    first_increment_s: Mapped[int] = mapped_column(Integer)
    next_increment_s: Mapped[int] = mapped_column(Integer)
    effective_from: Mapped[date | None] = mapped_column(Date)
