"""Payment tables: gateway customers, saved cards, purchases, webhook events, auto-recharge, refunds, disputes.

Card data never reaches them (CHECKLIST I57): only gateway ids, brand, last 4 digits and expiry month/year.
Amounts are int micro-units of the wallet currency (`amount`) and, where the gateway is asked, its minor
units (`amount_minor`), never float.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

PURCHASE_KINDS = ("purchase", "auto_recharge")
#: pending: recorded, the gateway has not answered yet; processing: sent, outcome unknown (a timeout) or the
#: gateway is still processing; requires_action: waiting for the card holder (3-D Secure); then succeeded or
#: failed. A failed purchase whose intent later succeeds (the customer completed 3-D Secure late) still grants.
PURCHASE_STATUSES = ("pending", "requires_action", "processing", "succeeded", "failed")
#: A purchase that holds an auto-recharge "in flight": at most one per wallet (partial unique index below).
IN_FLIGHT = ("pending", "processing")
#: setup: a SetupIntent was made for the browser; confirmed: the card it saved is known but not kept;
#: saved: the customer keeps it (list, reuse, auto-recharge); forgotten: detached after a one-off purchase;
#: removed: deleted by the customer.
CARD_STATUSES = ("setup", "confirmed", "saved", "forgotten", "removed")
REFUND_STATUSES = ("pending_approval", "processing", "succeeded", "failed", "rejected")
DISPUTE_STATUSES = ("open", "won", "lost")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class GatewayCustomer(Base):
    """The gateway's customer record of a user (it holds their saved cards)."""

    __tablename__ = "gateway_customers"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    gateway_customer_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PaymentMethod(Base):
    """A card as the gateway tokenised it: from its SetupIntent to saved, forgotten or removed."""

    __tablename__ = "payment_methods"
    __table_args__ = (
        CheckConstraint(_in("status", CARD_STATUSES), name="status"),
        CheckConstraint("last4 IS NULL OR length(last4) = 4", name="last4"),
        CheckConstraint("exp_month IS NULL OR (exp_month BETWEEN 1 AND 12)", name="exp_month"),
        Index("ix_payment_methods_user_id_status", "user_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(12))
    setup_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    gateway_payment_method_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    brand: Mapped[str | None] = mapped_column(String(16))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(SmallInteger)
    exp_year: Mapped[int | None] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    saved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Purchase(Base):
    """A card payment for credit, bought on-session (`purchase`) or by auto-recharge (`auto_recharge`).

    The row is committed before the gateway is called, with our idempotency key; the intent id and the
    outcome are recorded afterwards. A succeeded purchase names the one lot it granted (`lot_id`).
    """

    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint(_in("kind", PURCHASE_KINDS), name="kind"),
        CheckConstraint(_in("status", PURCHASE_STATUSES), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("amount_minor > 0", name="amount_minor_positive"),
        CheckConstraint("length(currency) = 3", name="currency_code"),
        CheckConstraint("status <> 'succeeded' OR lot_id IS NOT NULL", name="succeeded_has_lot"),
        Index("ix_purchases_status_created_at", "status", "created_at"),
        Index("ix_purchases_user_id_created_at", "user_id", "created_at"),
        Index("ix_purchases_wallet_id_kind_created_at", "wallet_id", "kind", "created_at"),
        # One auto-recharge in flight per wallet, whatever the number of jobs or triggers racing.
        Index("uq_purchases_auto_recharge_in_flight", "wallet_id", unique=True,
              sqlite_where=text("kind = 'auto_recharge' AND status IN ('pending', 'processing')"),
              postgresql_where=text("kind = 'auto_recharge' AND status IN ('pending', 'processing')")),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInt)
    amount_minor: Mapped[int] = mapped_column(BigInt)
    currency: Mapped[str] = mapped_column(String(3))
    payment_method_id: Mapped[int | None] = mapped_column(ForeignKey("payment_methods.id"), index=True)
    #: Keep the card afterwards; when False it is detached once the purchase is final.
    remember: Mapped[bool] = mapped_column(Boolean, default=False)
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("lots.id"), unique=True)
    #: Why it failed, as a code (card_declined, authentication_required, gateway_unavailable, ...), never text.
    failure_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """A verified gateway event, stored once by its id (the payload is not kept: it may hold personal data)."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    #: The intent, charge or dispute the event is about.
    object_id: Mapped[str | None] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: What handling did: granted, already_granted, ignored, unknown_intent, mismatch, ...
    outcome: Mapped[str] = mapped_column(String(32), default="")


class AutoRecharge(Base):
    """A wallet's auto-recharge settings and its failure state (back-off, consecutive failures)."""

    __tablename__ = "auto_recharge_settings"
    __table_args__ = (
        CheckConstraint("threshold > 0", name="threshold_positive"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("monthly_cap >= amount", name="monthly_cap_covers_amount"),
        CheckConstraint("consecutive_failures >= 0", name="failures_nonnegative"),
        Index("ix_auto_recharge_settings_enabled_next_attempt_at", "enabled", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold: Mapped[int] = mapped_column(BigInt)
    amount: Mapped[int] = mapped_column(BigInt)
    monthly_cap: Mapped[int] = mapped_column(BigInt)
    payment_method_id: Mapped[int] = mapped_column(ForeignKey("payment_methods.id"), index=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    #: No attempt before this time (back-off after a failure, or a cap reached).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Why it was switched off by the system: failures, dispute, card_removed (None: by the customer or on).
    disabled_reason: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Refund(Base):
    """A refund of (part of) a purchase: the credit left the wallet when it was requested.

    A second, different staff member approves a large one (the CHECK makes a self-approval impossible).
    `requested_by` is None for a refund made at the gateway itself (learnt from charge.refunded).
    """

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint(_in("status", REFUND_STATUSES), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("amount_minor > 0", name="amount_minor_positive"),
        CheckConstraint("approved_by IS NULL OR requested_by IS NULL OR approved_by <> requested_by",
                        name="second_approver"),
        Index("ix_refunds_status_created_at", "status", "created_at"),
        Index("ix_refunds_requested_by_created_at", "requested_by", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInt)
    amount_minor: Mapped[int] = mapped_column(BigInt)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    #: Support ticket the refund answers (M89), optional.
    ticket: Mapped[str | None] = mapped_column(String(64))
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    approved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    gateway_refund_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    debit_tx_id: Mapped[int | None] = mapped_column(ForeignKey("journal_transactions.id"))
    restore_tx_id: Mapped[int | None] = mapped_column(ForeignKey("journal_transactions.id"))
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Dispute(Base):
    """A chargeback on a purchase. While open, the purchase's unused credit is held (a ledger hold, key
    `dispute:<id>`); lost, that credit is written off to chargeback_loss; won, it is released."""

    __tablename__ = "disputes"
    __table_args__ = (
        CheckConstraint(_in("status", DISPUTE_STATUSES), name="status"),
        CheckConstraint("held >= 0", name="held_nonnegative"),
        CheckConstraint("written_off >= 0", name="written_off_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"), index=True)
    gateway_dispute_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(8))
    #: What the bank took back, in micro-units of the purchase currency.
    amount: Mapped[int] = mapped_column(BigInt)
    reason: Mapped[str | None] = mapped_column(String(64))
    #: Credit held while the dispute is open, and what a lost dispute wrote off.
    held: Mapped[int] = mapped_column(BigInt, default=0)
    written_off: Mapped[int] = mapped_column(BigInt, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
