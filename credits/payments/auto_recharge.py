"""Auto-recharge: charge a saved card off-session when a wallet's available credit falls below a threshold.

Triggering: nothing is added to the switch's request path. The `auto-recharge` job (every minute) scans the
wallets whose settings are enabled and whose available credit (balance - held) is below their threshold;
a settle that drops a wallet below it is picked up by the next run. The scan reads only enabled settings
joined to their wallets (index on enabled, next_attempt_at), never all wallets.

Guardrails: one attempt in flight per wallet (a partial unique index on purchases, and the wallet row lock);
a daily cap per wallet (CREDITS_AUTO_RECHARGE_DAILY_CAP) and the customer's monthly cap (calendar month, UTC);
back-off after a failure (CREDITS_AUTO_RECHARGE_BACKOFF_S x 4^(n-1)); switched off after
CREDITS_AUTO_RECHARGE_MAX_FAILURES consecutive failures, with an email; `authentication_required` (or
localstripe's `requires_action`) emails the customer a single-use link to pay on-session. Refused while the
account's money movement is frozen (users.money_frozen_at). An attempt is a purchase of kind auto_recharge.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from credits import clock, config, money
from credits.accounts.models import User
from credits.db import unit_of_work
from credits.errors import AccountNotActive, NotFound, ValidationError
from credits.ledger.models import Wallet
from credits.payments import cards, notices, service
from credits.payments.models import AutoRecharge, PaymentMethod, Purchase

log = logging.getLogger(__name__)

AR: Table = AutoRecharge.__table__  # type: ignore[assignment]
PU: Table = Purchase.__table__  # type: ignore[assignment]
PM: Table = PaymentMethod.__table__  # type: ignore[assignment]
W: Table = Wallet.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]

#: Purchases that count against the caps: paid, or possibly about to be.
COUNTED = ("succeeded", "pending", "processing", "requires_action")
#: Back-off when the gateway could not be reached (not the card's fault, not counted as a failure).
UNAVAILABLE_BACKOFF = timedelta(minutes=5)


@dataclass(frozen=True)
class AutoRechargeView:
    enabled: bool
    threshold: int | None
    amount: int | None
    monthly_cap: int | None
    payment_method: str | None
    currency: str
    consecutive_failures: int = 0
    next_attempt_at: datetime | None = None
    disabled_reason: str | None = None


def _view(session: Session, user_id: int) -> AutoRechargeView:
    wallet = session.execute(select(W.c.id, W.c.currency).where(W.c.user_id == user_id)).first()
    if wallet is None:
        raise NotFound("no wallet")
    row = session.execute(
        select(AR, PM.c.gateway_payment_method_id).join(PM, PM.c.id == AR.c.payment_method_id)
        .where(AR.c.wallet_id == wallet.id)
    ).first()
    if row is None:
        return AutoRechargeView(False, None, None, None, None, wallet.currency)
    return AutoRechargeView(row.enabled, row.threshold, row.amount, row.monthly_cap, row.gateway_payment_method_id,
                            wallet.currency, row.consecutive_failures, row.next_attempt_at, row.disabled_reason)


def get_settings(user_id: int) -> AutoRechargeView:
    """The user's auto-recharge settings (disabled and empty when never set)."""
    with unit_of_work() as uow:
        return _view(uow.session, user_id)


def configure(user_id: int, *, enabled: bool, threshold: str | None = None, amount: str | None = None,
              payment_method: str | None = None, monthly_cap: str | None = None) -> AutoRechargeView:
    """Set auto-recharge: below `threshold` available credit, charge `amount` to the saved card `payment_method`,
    at most `monthly_cap` per calendar month (and the operator's daily cap).

    Enabling needs every field and resets the failure count and back-off; `amount` follows the purchase rules
    (a package or within the custom range); `monthly_cap` is at least `amount` and at most
    CREDITS_AUTO_RECHARGE_MONTHLY_CAP_MAX. Disabling needs nothing else and is always allowed. Raises
    ValidationError, AccountNotActive (enabling while money movement is frozen or the account is not active),
    NotFound.
    """
    if not isinstance(enabled, bool):
        raise ValidationError("enabled is true or false", field="enabled")
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        user = s.execute(select(U.c.status, U.c.money_frozen_at).where(U.c.id == user_id)).first()
        wallet = s.execute(select(W.c.id, W.c.currency).where(W.c.user_id == user_id).with_for_update()).first()
        if user is None or wallet is None:
            raise NotFound("no wallet")
        existing = s.execute(select(AR).where(AR.c.wallet_id == wallet.id)).first()
        if not enabled:
            if existing is not None:
                s.execute(update(AR).where(AR.c.id == existing.id)
                          .values(enabled=False, disabled_reason=None, updated_at=now))
            uow.commit()
            return _view(s, user_id)
        if user.money_frozen_at is not None or user.status != "active":
            raise AccountNotActive("auto-recharge is suspended on this account; contact support")
        values = _validated(s, user_id, wallet.currency, threshold, amount, payment_method, monthly_cap)
        values.update(enabled=True, consecutive_failures=0, next_attempt_at=None, disabled_reason=None,
                      updated_at=now)
        if existing is None:
            s.execute(insert(AR).values(wallet_id=wallet.id, user_id=user_id, **values))
        else:
            s.execute(update(AR).where(AR.c.id == existing.id).values(**values))
        uow.commit()
        return _view(s, user_id)


def _validated(session: Session, user_id: int, currency: str, threshold: object, amount: object,
               payment_method: object, monthly_cap: object) -> dict[str, Any]:
    for name, value in (("threshold", threshold), ("amount", amount), ("payment_method", payment_method),
                        ("monthly_cap", monthly_cap)):
        if value is None:
            raise ValidationError(f"{name} is required to enable auto-recharge", field=name)
    if not isinstance(threshold, str) or not isinstance(monthly_cap, str):
        raise ValidationError('amounts are decimal strings such as "5.00"', field="threshold")
    threshold_micro = money.parse_amount(threshold, currency)
    amount_micro = service.purchase_amount(amount, currency)
    cap = money.parse_amount(monthly_cap, currency)
    cap_max = money.parse_amount(config.current().auto_recharge_monthly_cap_max, currency)
    if not amount_micro <= cap <= cap_max:
        raise ValidationError(
            f"monthly_cap is between the amount and {money.format_display(cap_max, currency)}", field="monthly_cap")
    if threshold_micro > money.parse_amount(config.current().purchase_custom_max, currency):
        raise ValidationError("threshold is larger than the largest purchase", field="threshold")
    pm_id = cards.check_payment_method_id(payment_method)
    card = session.execute(
        select(PM.c.id).where(PM.c.user_id == user_id, PM.c.gateway_payment_method_id == pm_id,
                              PM.c.status == "saved")
    ).scalar()
    if card is None:
        raise ValidationError("payment_method must be one of your saved cards", field="payment_method")
    return {"threshold": threshold_micro, "amount": amount_micro, "monthly_cap": cap, "payment_method_id": card}


# ---------------------------------------------------------------- the job


def due_wallets(now: datetime, limit: int = 200) -> list[int]:
    """Wallets with auto-recharge on, available credit below the threshold, and no back-off pending."""
    with unit_of_work() as uow:
        return list(uow.session.execute(
            select(AR.c.wallet_id).join(W, W.c.id == AR.c.wallet_id)
            .where(AR.c.enabled.is_(True), (W.c.balance - W.c.held) < AR.c.threshold,
                   AR.c.next_attempt_at.is_(None) | (AR.c.next_attempt_at <= now))
            .order_by(AR.c.wallet_id).limit(limit)
        ).scalars().all())


def run(now: datetime | None = None, *, limit: int = 200) -> dict[str, int]:
    """The `auto-recharge` job: try each due wallet once; return counts by outcome."""
    now = now or clock.now()
    counts: Counter[str] = Counter()
    for wallet_id in due_wallets(now, limit):
        try:
            counts[recharge_wallet(wallet_id)] += 1
        except Exception:  # one wallet's trouble must not stop the others
            log.exception("auto-recharge of wallet %s failed", wallet_id)
            counts["error"] += 1
    return dict(counts)


def _month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def _next_month(now: datetime) -> datetime:
    return datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)


def _cap_wait(session: Session, wallet_id: int, settings: Row[Any], now: datetime) -> datetime | None:
    """When the next attempt may come if one now would pass a cap; None when it is within both caps."""
    counted = (PU.c.wallet_id == wallet_id, PU.c.kind == "auto_recharge", PU.c.status.in_(COUNTED))
    day_ago = now - timedelta(days=1)
    daily = money.parse_amount(config.current().auto_recharge_daily_cap, settings.currency)
    today = session.execute(select(func.coalesce(func.sum(PU.c.amount), 0), func.min(PU.c.created_at))
                            .where(*counted, PU.c.created_at > day_ago)).one()
    if int(today[0]) + settings.amount > daily:
        return (today[1] or now) + timedelta(days=1)
    month: int = session.execute(select(func.coalesce(func.sum(PU.c.amount), 0))
                            .where(*counted, PU.c.created_at >= _month_start(now))).scalar_one()
    if int(month) + settings.amount > settings.monthly_cap:
        return _next_month(now)
    return None


def _start(wallet_id: int, now: datetime) -> tuple[str, int | None, str | None, str | None]:
    """Step 1: under the wallet lock, check everything and record the attempt; (outcome, purchase, customer, card)."""
    with unit_of_work() as uow:
        s = uow.session
        wallet = s.execute(select(W).where(W.c.id == wallet_id).with_for_update()).first()
        settings = s.execute(
            select(AR, W.c.currency).join(W, W.c.id == AR.c.wallet_id).where(AR.c.wallet_id == wallet_id)
        ).first()
        if wallet is None or settings is None or not settings.enabled:
            return "disabled", None, None, None
        if wallet.balance - wallet.held >= settings.threshold:
            return "not_needed", None, None, None
        if settings.next_attempt_at is not None and settings.next_attempt_at > now:
            return "backing_off", None, None, None
        user = s.execute(select(U.c.status, U.c.money_frozen_at).where(U.c.id == settings.user_id)).one()
        if user.money_frozen_at is not None or user.status != "active":
            return "frozen", None, None, None
        in_flight = s.execute(select(PU.c.id).where(PU.c.wallet_id == wallet_id, PU.c.kind == "auto_recharge",
                                                    PU.c.status.in_(("pending", "processing")))).first()
        if in_flight is not None:
            return "in_flight", None, None, None
        card = s.execute(select(PM.c.id, PM.c.status, PM.c.gateway_payment_method_id)
                         .where(PM.c.id == settings.payment_method_id)).one()
        customer = cards.customer_id_of(s, settings.user_id)
        if card.status != "saved" or card.gateway_payment_method_id is None or customer is None:
            s.execute(update(AR).where(AR.c.id == settings.id)
                      .values(enabled=False, disabled_reason="card_removed", updated_at=now))
            uow.commit()
            return "card_removed", None, None, None
        wait = _cap_wait(s, wallet_id, settings, now)
        if wait is not None:
            s.execute(update(AR).where(AR.c.id == settings.id).values(next_attempt_at=wait, updated_at=now))
            uow.commit()
            return "capped", None, None, None
        try:
            purchase_id: int = s.execute(
                insert(PU).values(user_id=settings.user_id, wallet_id=wallet_id, kind="auto_recharge",
                                  status="pending", amount=settings.amount,
                                  amount_minor=money.micro_to_minor(settings.amount, settings.currency),
                                  currency=settings.currency, payment_method_id=card.id, remember=True,
                                  idempotency_key=f"auto-recharge:{wallet_id}:{secrets.token_hex(8)}",
                                  created_at=now, updated_at=now).returning(PU.c.id)
            ).scalar_one()
            uow.commit()
        except IntegrityError:
            return "in_flight", None, None, None  # another trigger recorded its attempt first
        return "started", purchase_id, customer, card.gateway_payment_method_id


def recharge_wallet(wallet_id: int) -> str:
    """Try one auto-recharge of a wallet now; return the outcome.

    Outcomes: succeeded, failed, requires_action (the customer was emailed a pay link), processing (no answer:
    reconciliation settles it), or why nothing was tried: disabled, not_needed, backing_off, frozen,
    in_flight, card_removed, capped. Two racing calls for one wallet charge at most once.
    """
    now = clock.now()
    outcome, purchase_id, customer, card = _start(wallet_id, now)
    if purchase_id is None:
        return outcome
    assert customer is not None and card is not None
    intent, error = service.charge(purchase_id, customer_id=customer, payment_method=card, attach=False,
                                   off_session=True)
    status, _ = service.record(purchase_id, intent, error)
    return status


def record_outcome(session: Session, purchase: Row[Any], now: datetime, previous: str) -> None:
    """Update the wallet's auto-recharge state after one of its attempts reached succeeded, failed or
    requires_action (called in that transaction by the purchase service). A failure counts once per attempt."""
    settings = session.execute(select(AR).where(AR.c.wallet_id == purchase.wallet_id)).first()
    if settings is None:
        return
    amount = {"amount": notices.human(purchase.amount, purchase.currency), "currency": purchase.currency}
    if purchase.status == "succeeded":
        session.execute(update(AR).where(AR.c.id == settings.id)
                        .values(consecutive_failures=0, next_attempt_at=None, updated_at=now))
        return
    if previous not in ("pending", "processing"):
        return  # requires_action then failed: counted when it asked for action
    if purchase.failure_code == "gateway_unavailable":
        session.execute(update(AR).where(AR.c.id == settings.id)
                        .values(next_attempt_at=now + UNAVAILABLE_BACKOFF, updated_at=now))
        return
    cfg = config.current()
    failures = settings.consecutive_failures + 1
    wait = now + timedelta(seconds=cfg.auto_recharge_backoff_s * 4 ** (failures - 1))
    values: dict[str, Any] = {"consecutive_failures": failures, "next_attempt_at": wait, "updated_at": now}
    reason = purchase.failure_code or "failed"
    if purchase.status == "requires_action":
        link, _token, expires = notices.pay_link(session, purchase.user_id, purchase.id)
        notices.send(session, purchase.user_id, "auto_recharge_action_required",
                     dedupe_key=f"auto-recharge:action:{purchase.id}", purchase_id=purchase.id, link=link,
                     expires_at=expires, **amount)
    disabled = failures >= cfg.auto_recharge_max_failures
    if disabled:
        values.update(enabled=False, disabled_reason="failures")
    if disabled or purchase.status == "failed":
        notices.send(session, purchase.user_id, "auto_recharge_failed",
                     dedupe_key=f"auto-recharge:failed:{purchase.id}", reason=notices.reason_text(reason),
                     disabled=disabled, failures=failures, next_attempt_at=None if disabled else wait, **amount)
    session.execute(update(AR).where(AR.c.id == settings.id).values(**values))


def stop_for_wallet(session: Session, wallet_id: int, reason: str, now: datetime) -> None:
    """Switch auto-recharge off for a wallet (a dispute was opened on one of its payments)."""
    session.execute(update(AR).where(AR.c.wallet_id == wallet_id, AR.c.enabled.is_(True))
                    .values(enabled=False, disabled_reason=reason[:32], updated_at=now))


def pay_link_purchase(token: str) -> service.PurchaseView:
    """The auto-recharge an emailed pay link is for, settled with the gateway first (the pay page's use case).

    While it waits for 3-D Secure the view carries the `client_secret` the page passes to
    `stripe.confirmCardPayment`; the page then calls this again (or GET /api/v1/me/purchases/{id}). The link
    is single-use: once the purchase is final it is spent. Raises NotFound for an unknown, expired or spent
    link (never saying which).
    """
    import hashlib

    from credits import crypto
    from credits.accounts.models import EmailToken

    t: Table = EmailToken.__table__  # type: ignore[assignment]
    gone = NotFound("this link has expired or was already used")
    if not isinstance(token, str) or not 16 <= len(token) <= 200:
        raise gone
    now = clock.now()
    with unit_of_work() as uow:
        row = uow.session.execute(select(t).where(t.c.token_hash == hashlib.sha256(token.encode()).hexdigest(),
                                                  t.c.purpose == "pay_link")).first()
        if row is None or row.used_at is not None or row.expires_at <= now:
            raise gone
        data = crypto.decrypt(row.data_enc, "email_tokens", "data_enc", row.id) or ""
        kind, _, raw_id = data.partition(":")
        if kind != "purchase" or not raw_id.isdigit():
            raise gone
        owner = uow.session.execute(select(PU.c.user_id).where(PU.c.id == int(raw_id))).scalar()
        if owner != row.user_id:
            raise gone
    view = service.settle(int(raw_id))
    if view.status in service.FINAL:
        with unit_of_work() as uow:
            uow.session.execute(update(t).where(t.c.id == row.id, t.c.used_at.is_(None)).values(used_at=now))
            uow.commit()
    return view
