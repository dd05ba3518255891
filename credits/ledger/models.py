"""Ledger tables: wallets, lots, append-only journal transactions and postings, holds, transfers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

LOT_SOURCES = ("purchase", "auto_recharge", "transfer_in", "credit_note", "promo")
SYSTEM_ACCOUNTS = (
    "gateway_clearing",
    "usage_revenue",
    "breakage",
    "refunds",
    "chargeback_loss",
    "credit_loss",
    "promotions",
)
HOLD_STATUSES = ("active", "settled", "released", "expired")
TX_KINDS = ("grant", "settle", "expiry", "transfer", "refund_debit", "refund_restore", "adjustment")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Wallet(Base):
    """A customer's credit in one currency. `balance` = sum of lots' remaining; `held` = sum of active holds."""

    __tablename__ = "wallets"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_nonnegative"),
        CheckConstraint("held >= 0", name="held_nonnegative"),
        CheckConstraint("held <= balance", name="available_nonnegative"),
        CheckConstraint("length(currency) = 3", name="currency_code"),
        # Room on each page for the row's next versions: its frequent updates stay HOT (migration 0006).
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    account_number: Mapped[str] = mapped_column(String(16), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    balance: Mapped[int] = mapped_column(BigInt, default=0)
    held: Mapped[int] = mapped_column(BigInt, default=0)
    #: Earliest expiry among lots with credit left (may be stale-early; never stale-late).
    next_expiry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The rate plan its calls are rated with (None: the plan named `credits.rating.models.DEFAULT_PLAN`).
    rate_plan_id: Mapped[int | None] = mapped_column(ForeignKey("rate_plans.id"))
    #: At most this many simultaneous calls share the credit (None: no limit).
    max_concurrent_calls: Mapped[int | None] = mapped_column(Integer)

    @property
    def available(self) -> int:
        return self.balance - self.held


class Lot(Base):
    """A grant of credit with its own expiry; postings that move customer credit name their lot."""

    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint("granted > 0", name="granted_positive"),
        CheckConstraint("remaining >= 0", name="remaining_nonnegative"),
        CheckConstraint("remaining <= granted", name="remaining_le_granted"),
        CheckConstraint(_in("source", LOT_SOURCES), name="source"),
        Index("ix_lots_wallet_id_expires_at", "wallet_id", "expires_at"),
        {"postgresql_with": {"fillfactor": 70}},  # as wallets: settles update lots (migration 0006)
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    source: Mapped[str] = mapped_column(String(16))
    granted: Mapped[int] = mapped_column(BigInt)
    remaining: Mapped[int] = mapped_column(BigInt)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    grant_tx_id: Mapped[int] = mapped_column(ForeignKey("journal_transactions.id"), index=True)
    #: The lot a transfer drew from (transfer_in lots keep its expiry).
    origin_lot_id: Mapped[int | None] = mapped_column(ForeignKey("lots.id"))
    #: External reference: the purchase or payment this credit came from.
    reference: Mapped[str | None] = mapped_column(String(64), index=True)


class JournalTransaction(Base):
    """One money movement; its postings sum to zero (a deferred trigger checks it on PostgreSQL)."""

    __tablename__ = "journal_transactions"
    __table_args__ = (CheckConstraint(_in("kind", TX_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    memo: Mapped[str] = mapped_column(String(200), default="")
    actor: Mapped[str | None] = mapped_column(String(100))


class Posting(Base):
    """One leg of a journal transaction, against a wallet lot or a system account. Never updated or deleted."""

    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        CheckConstraint("(wallet_id IS NULL) <> (system_account IS NULL)", name="one_side"),
        CheckConstraint("wallet_id IS NULL OR lot_id IS NOT NULL", name="wallet_names_lot"),
        CheckConstraint(f"system_account IS NULL OR {_in('system_account', SYSTEM_ACCOUNTS)}", name="system_account"),
        Index("ix_postings_wallet_id_tx_id", "wallet_id", "tx_id"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("journal_transactions.id"), index=True)
    wallet_id: Mapped[int | None] = mapped_column(ForeignKey("wallets.id"))
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("lots.id"), index=True)
    system_account: Mapped[str | None] = mapped_column(String(24))
    amount: Mapped[int] = mapped_column(BigInt)


class Hold(Base):
    """A reservation of credit for one call: active, then settled, released or expired (each at most once)."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(_in("status", HOLD_STATUSES), name="status"),
        CheckConstraint("charged IS NULL OR charged >= 0", name="charged_nonnegative"),
        CheckConstraint("shortfall >= 0", name="shortfall_nonnegative"),
        Index("ix_holds_status_expires_at", "status", "expires_at"),
        Index("ix_holds_wallet_id_status", "wallet_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    key: Mapped[str] = mapped_column(String(200), unique=True)
    amount: Mapped[int] = mapped_column(BigInt)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    charged: Mapped[int | None] = mapped_column(BigInt)
    shortfall: Mapped[int] = mapped_column(BigInt, default=0)
    tx_id: Mapped[int | None] = mapped_column(ForeignKey("journal_transactions.id"))


class Transfer(Base):
    """A credit transfer between two wallets (the journal holds the money; this row holds who and how much)."""

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("from_wallet_id <> to_wallet_id", name="not_to_self"),
        Index("ix_transfers_from_wallet_id_created_at", "from_wallet_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("journal_transactions.id"), unique=True)
    from_wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    to_wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInt)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)

