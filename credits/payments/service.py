"""Purchases: buy credit with a card, settle the payment intent, grant the credit exactly once.

The flow (DESIGN §6), the same on Stripe and localstripe: the page gets a SetupIntent (cards.start_setup),
confirms it with Stripe.js, then `purchase()` charges the card server-side. Each purchase is three steps,
never a gateway call inside a database transaction:

1. record the purchase (status pending, our idempotency key) and commit;
2. attach the card and create+confirm the payment intent at the gateway with that key, outside any transaction;
3. record the outcome in a new transaction: `succeeded` grants the credit there and then.

Credit is granted only for an intent the gateway reports succeeded: from this request, from a retrieve
(`get_purchase`, the reconciliation job) or from the verified `payment_intent.succeeded` webhook. Whichever
comes first grants; the ledger grant is keyed on the intent id and the purchase names its one lot, so
the others find it done. If step 3 is lost (a crash, a timeout), the reconciliation job finds the intent by
the purchase id in its metadata and settles it.

An intent known only by its metadata (its id not recorded yet) must name the purchase twice: `purchase_id` and
`purchase_ref`, a digest of the purchase's unique idempotency key. Purchase ids repeat across databases (a
staging copy on the same gateway account, a test run); the ref does not, so another deployment's intent for
"purchase 1" never grants this deployment's purchase 1.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from credits import clock, config, money
from credits.accounts.models import User
from credits.db import unit_of_work
from credits.errors import AccountNotActive, IdempotencyConflict, NotFound, ValidationError
from credits.ledger.models import Lot, Wallet
from credits.ledger.service import _grant
from credits.payments import cards, notices, provider
from credits.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    GatewayError,
    GatewayNotFound,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentError,
)
from credits.payments.gateway import PaymentIntentResult
from credits.payments.models import PaymentMethod, Purchase

log = logging.getLogger(__name__)

PU: Table = Purchase.__table__  # type: ignore[assignment]
PM: Table = PaymentMethod.__table__  # type: ignore[assignment]
W: Table = Wallet.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]

FINAL = ("succeeded", "failed")
OPEN = ("pending", "processing", "requires_action")
CLIENT_KEY_MAX = 64


@dataclass(frozen=True)
class PurchaseView:
    """A purchase as its owner sees it. `client_secret` is set only while 3-D Secure is awaited."""

    id: int
    kind: str
    status: str
    amount: int
    currency: str
    created_at: datetime
    client_secret: str | None = None
    payment_intent_id: str | None = None
    lot_id: int | None = None
    lot_expires_at: datetime | None = None
    failure_code: str | None = None


# ---------------------------------------------------------------- amounts


def packages(currency: str) -> list[int]:
    """The credit packages on offer (CREDITS_PURCHASE_PACKAGES), in micro-units of `currency`."""
    cfg = config.current()
    return [money.parse_amount(p.strip(), currency) for p in cfg.purchase_packages.split(",") if p.strip()]


def custom_range(currency: str) -> tuple[int, int]:
    cfg = config.current()
    return money.parse_amount(cfg.purchase_custom_min, currency), money.parse_amount(cfg.purchase_custom_max, currency)


def purchase_amount(amount: object, currency: str) -> int:
    """Parse a purchase amount: a package, or a custom amount between the minimum and maximum (inclusive).

    Raises ValidationError (not a decimal string, more decimals than the currency has, out of range).
    """
    if not isinstance(amount, str):
        raise ValidationError('amount is a decimal string such as "10.00"', field="amount")
    micro = money.parse_amount(amount, currency)
    low, high = custom_range(currency)
    if micro in packages(currency) or low <= micro <= high:
        return micro
    offered = ", ".join(money.format_display(p, currency) for p in packages(currency))
    raise ValidationError(
        f"choose a package ({offered}) or an amount between {money.format_display(low, currency)} and "
        f"{money.format_display(high, currency)}", field="amount")


# ---------------------------------------------------------------- views and rows


def _view(session: Session, row: Any, client_secret: str | None = None) -> PurchaseView:
    expires = None
    if row.lot_id is not None:
        expires = session.execute(select(L.c.expires_at).where(L.c.id == row.lot_id)).scalar()
    return PurchaseView(row.id, row.kind, row.status, row.amount, row.currency, row.created_at,
                        client_secret if row.status == "requires_action" else None, row.payment_intent_id,
                        row.lot_id, expires, row.failure_code)


def view(purchase_id: int) -> PurchaseView:
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id)).first()
        if row is None:
            raise NotFound("no such purchase")
        return _view(uow.session, row)


def _lock_purchase(session: Session, purchase_id: int) -> Row[Any]:
    row = session.execute(select(PU).where(PU.c.id == purchase_id).with_for_update()).first()
    if row is None:
        raise NotFound("no such purchase")
    return row


def purchase_ref(idempotency_key: str) -> str:
    """The reference of a purchase in its intent's metadata: a digest of its unique idempotency key."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def names_purchase(metadata: Any, purchase: Any) -> bool:
    """Whether an intent's metadata names this purchase: its id and its ref (see the module's docstring)."""
    meta = dict(metadata or {})
    return meta.get("purchase_id") == str(purchase.id) and meta.get("purchase_ref") == purchase_ref(
        purchase.idempotency_key)


def find_purchase(session: Session, intent_id: str | None, metadata: dict[str, str] | None) -> Row[Any] | None:
    """The purchase an intent belongs to: by the intent id recorded, else by `purchase_id` in its metadata."""
    if intent_id:
        row = session.execute(select(PU).where(PU.c.payment_intent_id == intent_id).with_for_update()).first()
        if row is not None:
            return row
    raw = (metadata or {}).get("purchase_id", "")
    if raw.isascii() and raw.isdigit() and len(raw) < 19:
        return session.execute(select(PU).where(PU.c.id == int(raw)).with_for_update()).first()
    return None


# ---------------------------------------------------------------- settling an intent


def apply_intent(session: Session, purchase: Row[Any], intent: PaymentIntentResult, now: datetime) -> str:
    """Record what the gateway says about a purchase's intent, in the caller's transaction; return the outcome.

    `succeeded` grants the credit (once: a purchase already holding its lot answers `already_granted`);
    `requires_action` and `processing` are noted; a failed intent marks the purchase failed unless it
    succeeded. An intent that does not match the purchase (another intent, amount, currency; or, for a purchase
    with no intent recorded, metadata without the purchase's ref) changes nothing and answers `mismatch`. The
    purchase row must be locked by the caller.
    """
    if purchase.payment_intent_id not in (None, intent.id):
        log.warning("purchase %s has intent %s, not %s", purchase.id, purchase.payment_intent_id, intent.id)
        return "mismatch"
    if purchase.payment_intent_id is None and not names_purchase(intent.metadata, purchase):
        log.warning("intent %s names purchase %s without its ref", intent.id, purchase.id)
        return "mismatch"
    meta_id = dict(intent.metadata).get("purchase_id")
    if (intent.amount_minor != purchase.amount_minor or intent.currency.upper() != purchase.currency
            or (meta_id is not None and meta_id != str(purchase.id))):
        log.warning("intent %s does not match purchase %s", intent.id, purchase.id)
        return "mismatch"
    values: dict[str, Any] = {"payment_intent_id": intent.id, "updated_at": now}
    outcome = "noted"
    if intent.status == "succeeded":
        if purchase.lot_id is not None:
            outcome = "already_granted"
        else:
            lot_id = _grant_credit(session, purchase, intent.id, now)
            values.update(status="succeeded", lot_id=lot_id, settled_at=now, failure_code=None)
            outcome = "granted"
    elif purchase.status == "succeeded":
        outcome = "already_granted"
    elif intent.status == "requires_action":
        values.update(status="requires_action")
    elif intent.status in ("processing", "requires_confirmation", "requires_capture"):
        values.update(status="processing")
    else:  # requires_payment_method (declined, authentication failed) or canceled
        code = intent.error_code or ("canceled" if intent.status == "canceled" else "payment_failed")
        if purchase.status != "failed":
            values.update(status="failed", failure_code=code[:64], settled_at=now)
            outcome = "failed"
        else:
            outcome = "already_failed"
    session.execute(update(PU).where(PU.c.id == purchase.id).values(**values))
    if outcome in ("granted", "failed") or values.get("status") == "requires_action":
        _after_status(session, purchase.id, now, purchase.status)
    return outcome


def _grant_credit(session: Session, purchase: Row[Any], intent_id: str, now: datetime) -> int:
    source = "auto_recharge" if purchase.kind == "auto_recharge" else "purchase"
    actor = "system:auto-recharge" if purchase.kind == "auto_recharge" else f"user:{purchase.user_id}"
    result = _grant(session, purchase.wallet_id, purchase.amount, source, now, key=f"payment_intent:{intent_id}",
                    reference=f"purchase:{purchase.id}", currency=purchase.currency, actor=actor,
                    memo=f"card payment {money.format_display(purchase.amount, purchase.currency)}")
    lot = result.lot
    card = None
    if purchase.payment_method_id is not None:
        card = session.execute(select(PM.c.brand, PM.c.last4).where(PM.c.id == purchase.payment_method_id)).first()
    balance: int = session.execute(select(W.c.balance).where(W.c.id == purchase.wallet_id)).scalar_one()
    notices.send(session, purchase.user_id, "purchase_receipt", dedupe_key=f"receipt:purchase:{purchase.id}",
                 purchase_id=purchase.id, kind=purchase.kind, amount=notices.human(purchase.amount, purchase.currency),
                 currency=purchase.currency, card_brand=card.brand if card else None,
                 card_last4=card.last4 if card else None, expires_at=lot.expires_at,
                 balance=notices.human(balance, purchase.currency))
    return lot.id


def _after_status(session: Session, purchase_id: int, now: datetime, previous: str) -> None:
    """Follow-ups of a purchase reaching succeeded, failed or requires_action: its card, auto-recharge state.

    `previous` is its status before, so that an auto-recharge failure is counted once (requires_action, then
    failed when the customer gives up, is one failure).
    """
    row = session.execute(select(PU).where(PU.c.id == purchase_id)).one()
    if row.status in FINAL and row.payment_method_id is not None:
        card_status = session.execute(select(PM.c.status).where(PM.c.id == row.payment_method_id)).scalar()
        if card_status == "confirmed":
            if row.remember and row.status == "succeeded":
                session.execute(update(PM).where(PM.c.id == row.payment_method_id)
                                .values(status="saved", saved_at=now))
            else:
                cards.forget_in(session, row.payment_method_id)
    if row.kind == "auto_recharge":
        from credits.payments import auto_recharge

        auto_recharge.record_outcome(session, row, now, previous)


def record_error(session: Session, purchase: Row[Any], error: Exception, now: datetime) -> str:
    """Record a gateway error raised for a purchase's charge, in the caller's transaction; return the status.

    CardDeclined and GatewayUnavailable (nothing was charged) fail it; AuthenticationRequired (off-session)
    leaves it waiting for the customer; GatewayTimeout (outcome unknown) marks it processing, for the
    reconciliation job. A purchase that succeeded meanwhile (a webhook was faster) is left alone.
    """
    if purchase.status == "succeeded":
        return "succeeded"
    intent_id = getattr(error, "payment_intent_id", None)
    values: dict[str, Any] = {"updated_at": now}
    if intent_id and purchase.payment_intent_id is None:
        clash = session.execute(select(PU.c.id).where(PU.c.payment_intent_id == intent_id)).first()
        if clash is None:
            values["payment_intent_id"] = intent_id
    if isinstance(error, AuthenticationRequired):
        values.update(status="requires_action", failure_code="authentication_required")
    elif isinstance(error, GatewayTimeout):
        values.update(status="processing", failure_code="gateway_timeout")
    else:
        code = error.code if isinstance(error, PaymentError) else "error"
        values.update(status="failed", failure_code=code[:64], settled_at=now)
    session.execute(update(PU).where(PU.c.id == purchase.id).values(**values))
    if values["status"] != "processing":
        _after_status(session, purchase.id, now, purchase.status)
    return str(values["status"])


def record(purchase_id: int, intent: PaymentIntentResult | None, error: Exception | None) -> tuple[str, int | None]:
    """Step 3: record the gateway's answer in its own transaction; return (status, card to detach or None)."""
    now = clock.now()
    with unit_of_work() as uow:
        row = _lock_purchase(uow.session, purchase_id)
        if intent is not None:
            apply_intent(uow.session, row, intent, now)
        elif error is not None:
            record_error(uow.session, row, error, now)
        after = uow.session.execute(select(PU.c.status, PU.c.payment_method_id).where(PU.c.id == purchase_id)).one()
        card_status = None
        if after.payment_method_id is not None:
            card_status = uow.session.execute(select(PM.c.status).where(PM.c.id == after.payment_method_id)).scalar()
        uow.commit()
    return after.status, after.payment_method_id if card_status == "forgotten" else None


def charge(purchase_id: int, *, customer_id: str, payment_method: str, attach: bool,
           off_session: bool) -> tuple[PaymentIntentResult | None, PaymentError | None]:
    """Step 2: attach the card (when asked) and create+confirm the intent, outside any transaction.

    Returns (intent, None) or (None, the gateway's error); never raises a PaymentError. An attach that
    times out is reported as GatewayUnavailable: no payment was attempted, so nothing can have been charged.
    """
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id)).one()
    gw = provider.gateway()
    if attach:
        try:
            info = gw.attach_payment_method(payment_method, customer_id,
                                            idempotency_key=f"{row.idempotency_key}:attach")
        except GatewayTimeout:
            return None, GatewayUnavailable()
        except GatewayNotFound:
            return None, CardDeclined("This card cannot be used. Add it again or use another card.",
                                      decline_code="payment_method_not_found")
        except PaymentError as exc:
            return None, exc
        with unit_of_work() as uow:
            cards.record_card_details(uow.session, row.payment_method_id, info.brand, info.last4, info.exp_month,
                                      info.exp_year)
            uow.commit()
    try:
        intent = gw.create_payment_intent(
            amount_minor=row.amount_minor, currency=row.currency, customer_id=customer_id,
            payment_method_id=payment_method, off_session=off_session, idempotency_key=row.idempotency_key,
            metadata={"purchase_id": str(row.id), "purchase_ref": purchase_ref(row.idempotency_key),
                      "wallet_id": str(row.wallet_id), "user_id": str(row.user_id), "kind": row.kind},
        )
    except PaymentError as exc:
        return None, exc
    return intent, None


# ---------------------------------------------------------------- use cases


def _buyer(session: Session, user_id: int) -> tuple[Row[Any], Row[Any]]:
    user = session.execute(select(U.c.id, U.c.status, U.c.money_frozen_at).where(U.c.id == user_id)).first()
    if user is None:
        raise NotFound("no such user")
    wallet = session.execute(select(W.c.id, W.c.currency).where(W.c.user_id == user_id)).first()
    if wallet is None:
        raise NotFound("no wallet")
    if user.status != "active":
        raise AccountNotActive("your account cannot buy credit right now")
    return user, wallet


def purchase(user_id: int, amount: str, payment_method: str, *, remember: bool = False,
             client_key: str | None = None) -> PurchaseView:
    """Buy `amount` of credit (a decimal string in the wallet's currency) with a card, on-session.

    `payment_method` is the id Stripe.js returned after `confirmCardSetup` on one of this user's
    SetupIntents, or a saved card. `remember` keeps a new card; otherwise it is detached once the purchase
    is final. Returns the purchase: `succeeded` (the credit is in the wallet), `requires_action` (pass
    `client_secret` to `stripe.confirmCardPayment`, then call `get_purchase`), or `processing` (the gateway
    did not answer; do not pay again). With `client_key` (the Idempotency-Key header) a repeat returns the
    first purchase. Raises ValidationError (amount, unknown card), AccountNotActive (account not active;
    saved cards while money movement is frozen), CardDeclined, GatewayUnavailable, GatewayError,
    IdempotencyConflict.
    """
    if not isinstance(remember, bool):
        raise ValidationError("remember is true or false", field="remember")
    if client_key is not None and (not isinstance(client_key, str) or not 1 <= len(client_key) <= CLIENT_KEY_MAX
                                   or not client_key.isprintable()):
        raise ValidationError(f"Idempotency-Key is 1-{CLIENT_KEY_MAX} printable characters", field="Idempotency-Key")
    with unit_of_work() as uow:
        user, wallet = _buyer(uow.session, user_id)
        micro = purchase_amount(amount, wallet.currency)
        if client_key is not None:
            replay = uow.session.execute(
                select(PU).where(PU.c.idempotency_key == f"purchase:{user_id}:{client_key}")).first()
            if replay is not None:
                if replay.amount != micro:
                    raise IdempotencyConflict("this Idempotency-Key was used for another purchase")
                return _view(uow.session, replay)
    card = cards.resolve_card(user_id, payment_method)
    if card.status == "saved" and user.money_frozen_at is not None:
        raise AccountNotActive("purchases with saved cards are suspended on this account; contact support")
    customer_id = cards.ensure_customer(user_id)
    now = clock.now()
    key = f"purchase:{user_id}:{client_key}" if client_key else f"purchase:{secrets.token_hex(12)}"
    with unit_of_work() as uow:
        purchase_id: int = uow.session.execute(
            insert(PU).values(user_id=user_id, wallet_id=wallet.id, kind="purchase", status="pending", amount=micro,
                              amount_minor=money.micro_to_minor(micro, wallet.currency), currency=wallet.currency,
                              payment_method_id=card.id, remember=remember, idempotency_key=key, created_at=now,
                              updated_at=now).returning(PU.c.id)
        ).scalar_one()
        uow.commit()
    intent, error = charge(purchase_id, customer_id=customer_id, payment_method=card.gateway_id,
                           attach=card.status != "saved", off_session=False)
    status, to_detach = record(purchase_id, intent, error)
    if to_detach is not None:
        cards.detach(to_detach)
    if error is not None and status == "failed":
        raise error
    with unit_of_work() as uow:
        return _view(uow.session, _lock_purchase(uow.session, purchase_id), intent.client_secret if intent else None)


def settle(purchase_id: int) -> PurchaseView:
    """Retrieve the purchase's intent from the gateway and record its state (3-D Secure done, reconciliation).

    A purchase without an intent id is looked up by its metadata among the intents created since it was
    (see `find_lost_intent`). Final purchases are returned as they are. Raises NotFound, gateway errors.
    """
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id)).first()
        if row is None:
            raise NotFound("no such purchase")
        if row.status == "succeeded":
            return _view(uow.session, row)
    gw = provider.gateway()
    intent: PaymentIntentResult | None
    if row.payment_intent_id is not None:
        try:
            intent = gw.retrieve_payment_intent(row.payment_intent_id)
        except GatewayNotFound:
            intent = None
    else:
        intent = find_lost_intent(row)
    if intent is None:
        return view(purchase_id)
    _status, to_detach = record(purchase_id, intent, None)
    if to_detach is not None:
        cards.detach(to_detach)
    with unit_of_work() as uow:
        return _view(uow.session, _lock_purchase(uow.session, purchase_id), intent.client_secret)


def find_lost_intent(row: Any) -> PaymentIntentResult | None:
    """The intent made for a purchase whose answer we never recorded, found by its metadata (`names_purchase`)."""
    from datetime import timedelta

    since = row.created_at - timedelta(minutes=5)
    for candidate in provider.gateway().list_payment_intents(created_after=since, limit=1000):
        if names_purchase(candidate.metadata, row):
            return candidate
    return None


def get_purchase(user_id: int, purchase_id: int) -> PurchaseView:
    """The user's purchase, settled with the gateway first if it is still open (after `confirmCardPayment`).

    Raises NotFound for a purchase that is not the user's. A gateway that cannot be reached leaves the
    purchase as it was (the reconciliation job settles it later).
    """
    with unit_of_work() as uow:
        row = uow.session.execute(select(PU).where(PU.c.id == purchase_id, PU.c.user_id == user_id)).first()
        if row is None:
            raise NotFound("no such purchase")
        if row.status not in OPEN or row.payment_intent_id is None:
            return _view(uow.session, row)
    try:
        return settle(purchase_id)
    except GatewayError as exc:
        log.warning("settling purchase %s failed: %s", purchase_id, exc.code)
        return view(purchase_id)
