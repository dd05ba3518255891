"""Cards: the gateway customer of a user, SetupIntents for the browser, saved cards (list, save, remove).

A card reaches us only as the gateway's payment method id: the browser hands the number to Stripe.js
(`confirmCardSetup` with the client secret of a SetupIntent made here). A method is usable by a user when it
is saved by them, or when it is the method of a SetupIntent made for them (checked at the gateway, or from
the `setup_intent.succeeded` webhook). Every gateway call happens outside a database transaction: record
the intent, commit, call with our idempotency key, record the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from credits import clock
from credits.accounts.models import User
from credits.db import insert_for, unit_of_work
from credits.errors import NotFound, ValidationError
from credits.payments import provider
from credits.payments.errors import GatewayError, GatewayNotFound
from credits.payments.models import AutoRecharge, GatewayCustomer, PaymentMethod

log = logging.getLogger(__name__)

GC: Table = GatewayCustomer.__table__  # type: ignore[assignment]
PM: Table = PaymentMethod.__table__  # type: ignore[assignment]
AR: Table = AutoRecharge.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]

#: SetupIntents younger than this are looked up at the gateway when a purchase names their card.
SETUP_LOOKBACK = timedelta(days=1)
#: How many of a user's recent SetupIntents a purchase may retrieve to find its card.
SETUP_LOOKUPS = 5
MAX_ID = 64


@dataclass(frozen=True)
class CardSetup:
    """What the page needs to collect a card with Stripe.js: `stripe.confirmCardSetup(client_secret, ...)`."""

    setup_intent_id: str
    client_secret: str
    publishable_key: str
    stripe_js_url: str


@dataclass(frozen=True)
class CardView:
    """A saved card as the customer sees it; `id` is the gateway's payment method id."""

    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    saved_at: datetime | None


@dataclass(frozen=True)
class CardRow:
    """A payment_methods row resolved for a user: our id, the gateway id, and its state."""

    id: int
    gateway_id: str
    status: str


def check_payment_method_id(value: object) -> str:
    """Return a plausible gateway payment method id; raise ValidationError (never echoing the value)."""
    if (not isinstance(value, str) or not 3 <= len(value) <= MAX_ID or not value.startswith("pm_")
            or not value.replace("_", "").isalnum()):
        raise ValidationError("payment_method is the id Stripe.js returned (pm_...)", field="payment_method")
    return value


def _view(row: Any) -> CardView:
    return CardView(row.gateway_payment_method_id, row.brand or "unknown", row.last4 or "", row.exp_month or 0,
                    row.exp_year or 0, row.saved_at)


def customer_id_of(session: Session, user_id: int) -> str | None:
    """The gateway customer id of a user, if one was made."""
    value = session.execute(select(GC.c.gateway_customer_id).where(GC.c.user_id == user_id)).scalar()
    return str(value) if value else None


def ensure_customer(user_id: int) -> str:
    """Return the user's gateway customer id, creating the customer at the gateway the first time.

    Idempotency key `user:<id>:customer`: two racing first calls get the same customer at Stripe; the
    database keeps one row per user either way. No personal data goes to the gateway (metadata: user id).
    Raises NotFound for an unknown user, GatewayUnavailable / GatewayTimeout / GatewayError.
    """
    with unit_of_work() as uow:
        existing = customer_id_of(uow.session, user_id)
        if existing:
            return existing
        if uow.session.execute(select(U.c.id).where(U.c.id == user_id)).scalar() is None:
            raise NotFound("no such user")
    customer = provider.gateway().create_customer(metadata={"user_id": str(user_id)},
                                                  idempotency_key=f"user:{user_id}:customer")
    with unit_of_work() as uow:
        uow.session.execute(
            insert_for(uow.dialect)(GC).values(user_id=user_id, gateway_customer_id=customer.id,
                                               created_at=clock.now()).on_conflict_do_nothing()
        )
        uow.commit()
        winner = customer_id_of(uow.session, user_id)
    assert winner is not None
    return winner


def start_setup(user_id: int) -> CardSetup:
    """Create a SetupIntent for a new card (and the gateway customer if needed) for the browser to confirm.

    Returns the client secret with the publishable key and Stripe.js URL the page initialises Stripe.js with.
    The card becomes usable for a purchase once `confirmCardSetup` succeeded; it is kept only when the
    customer says so (`save_card`, or a purchase with remember). Raises NotFound, gateway errors.
    """
    customer = ensure_customer(user_id)
    with unit_of_work() as uow:
        row_id: int = uow.session.execute(
            insert(PM).values(user_id=user_id, status="setup", created_at=clock.now()).returning(PM.c.id)
        ).scalar_one()
        uow.commit()
    si = provider.gateway().create_setup_intent(
        customer, metadata={"user_id": str(user_id), "setup_id": str(row_id)}, idempotency_key=f"setup:{row_id}"
    )
    with unit_of_work() as uow:
        uow.session.execute(update(PM).where(PM.c.id == row_id).values(setup_intent_id=si.id))
        uow.commit()
    return CardSetup(si.id, si.client_secret, provider.publishable_key(), provider.stripe_js_url())


def resolve_card(user_id: int, payment_method: str) -> CardRow:
    """Find the user's card `payment_method`: saved, confirmed, or the card of one of their SetupIntents.

    A card set up for this user but not yet known here is looked up at the gateway (their few most recent
    SetupIntents) and recorded as confirmed. Raises ValidationError when the card is not this user's or is
    no longer usable (the message never says whose it is).
    """
    pm_id = check_payment_method_id(payment_method)
    unknown = ValidationError("unknown payment method: add the card first", field="payment_method")
    with unit_of_work() as uow:
        row = uow.session.execute(select(PM).where(PM.c.gateway_payment_method_id == pm_id)).first()
        if row is not None:
            if row.user_id != user_id or row.status not in ("saved", "confirmed"):
                raise unknown
            return CardRow(row.id, pm_id, row.status)
        pending = uow.session.execute(
            select(PM.c.id, PM.c.setup_intent_id)
            .where(PM.c.user_id == user_id, PM.c.status == "setup", PM.c.setup_intent_id.is_not(None),
                   PM.c.created_at > clock.now() - SETUP_LOOKBACK)
            .order_by(PM.c.id.desc()).limit(SETUP_LOOKUPS)
        ).all()
    gw = provider.gateway()
    for setup in pending:
        try:
            si = gw.retrieve_setup_intent(setup.setup_intent_id)
        except GatewayNotFound:
            continue
        if si.status == "succeeded" and si.payment_method == pm_id:
            with unit_of_work() as uow:
                uow.session.execute(
                    update(PM).where(PM.c.id == setup.id, PM.c.status == "setup")
                    .values(gateway_payment_method_id=pm_id, status="confirmed")
                )
                uow.commit()
            return CardRow(setup.id, pm_id, "confirmed")
    raise unknown


def record_card_details(session: Session, card_id: int, brand: str, last4: str, exp_month: int,
                        exp_year: int) -> None:
    """Store what may be shown of a card (I57: brand, last 4 digits, expiry), nothing else."""
    session.execute(update(PM).where(PM.c.id == card_id).values(
        brand=(brand or "unknown")[:16], last4=last4 if len(last4) == 4 and last4.isdigit() else None,
        exp_month=exp_month if 1 <= exp_month <= 12 else None, exp_year=exp_year or None))


def save_card(user_id: int, payment_method: str) -> CardView:
    """Keep a card the customer confirmed with Stripe.js, for later purchases and auto-recharge.

    Attaches it to the gateway customer explicitly (localstripe's SetupIntents do not). Saving a saved
    card returns it unchanged. Raises ValidationError (not this user's card), CardDeclined (refused at
    attach), gateway errors.
    """
    card = resolve_card(user_id, payment_method)
    if card.status == "saved":
        return list_cards(user_id, only=card.id)[0]
    customer = ensure_customer(user_id)
    info = provider.gateway().attach_payment_method(card.gateway_id, customer,
                                                    idempotency_key=f"card:{card.id}:attach")
    with unit_of_work() as uow:
        record_card_details(uow.session, card.id, info.brand, info.last4, info.exp_month, info.exp_year)
        uow.session.execute(update(PM).where(PM.c.id == card.id, PM.c.status == "confirmed")
                            .values(status="saved", saved_at=clock.now()))
        uow.commit()
    return list_cards(user_id, only=card.id)[0]


def list_cards(user_id: int, *, only: int | None = None) -> list[CardView]:
    """The user's saved cards, oldest first (brand, last 4 digits, expiry)."""
    with unit_of_work() as uow:
        query = select(PM).where(PM.c.user_id == user_id, PM.c.status == "saved")
        if only is not None:
            query = query.where(PM.c.id == only)
        return [_view(r) for r in uow.session.execute(query.order_by(PM.c.id)).all()]


def remove_card(user_id: int, payment_method: str) -> None:
    """Remove a saved card: never charged again (auto-recharge on it is switched off), detached at the gateway.

    Raises NotFound when the user has no such saved card. A failed detach is retried by the
    reconciliation job; the card is already unusable here.
    """
    if not isinstance(payment_method, str) or len(payment_method) > MAX_ID:
        raise NotFound("no such card")
    now = clock.now()
    with unit_of_work() as uow:
        row = uow.session.execute(
            select(PM.c.id).where(PM.c.user_id == user_id, PM.c.gateway_payment_method_id == payment_method,
                                  PM.c.status == "saved").with_for_update()
        ).first()
        if row is None:
            raise NotFound("no such card")
        uow.session.execute(update(PM).where(PM.c.id == row.id).values(status="removed", removed_at=now))
        uow.session.execute(update(AR).where(AR.c.payment_method_id == row.id, AR.c.enabled.is_(True))
                            .values(enabled=False, disabled_reason="card_removed", updated_at=now))
        uow.commit()
    detach(row.id)


def forget_in(session: Session, card_id: int) -> None:
    """Mark a card that was confirmed for one purchase and not to be kept as forgotten (detach follows)."""
    session.execute(update(PM).where(PM.c.id == card_id, PM.c.status == "confirmed")
                    .values(status="forgotten", removed_at=clock.now()))


def detach(card_id: int) -> bool:
    """Detach a forgotten or removed card at the gateway; True when done (or nothing was attached).

    Best effort: a gateway failure is logged and left for the reconciliation job (`detach_pending`).
    """
    with unit_of_work() as uow:
        row = uow.session.execute(select(PM).where(PM.c.id == card_id)).first()
    if row is None or row.status not in ("forgotten", "removed") or row.gateway_payment_method_id is None:
        return True
    try:
        provider.gateway().detach_payment_method(row.gateway_payment_method_id,
                                                 idempotency_key=f"card:{card_id}:detach")
    except GatewayNotFound:
        pass
    except GatewayError as exc:
        if type(exc) is not GatewayError:  # unavailable or timeout: try again later
            log.warning("detaching card %s failed (%s); the reconciliation job retries", card_id, exc.code)
            return False
        # The gateway refused: not attached (any more). Nothing to undo.
    with unit_of_work() as uow:
        # setup_intent_id kept; the gateway id is cleared so the row no longer points at a usable card.
        uow.session.execute(update(PM).where(PM.c.id == card_id).values(gateway_payment_method_id=None))
        uow.commit()
    return True


def detach_pending(limit: int = 100) -> int:
    """Detach forgotten and removed cards still attached at the gateway; return how many were detached."""
    with unit_of_work() as uow:
        ids: list[int] = list(uow.session.execute(
            select(PM.c.id).where(PM.c.status.in_(("forgotten", "removed")),
                                  PM.c.gateway_payment_method_id.is_not(None)).order_by(PM.c.id).limit(limit)
        ).scalars().all())
    return sum(1 for card_id in ids if detach(card_id))


def abandon_stale_setups(now: datetime | None = None, limit: int = 100) -> int:
    """Forget cards set up more than a day ago and never used or saved (an abandoned checkout)."""
    now = now or clock.now()
    from credits.payments.models import Purchase

    pu: Table = Purchase.__table__  # type: ignore[assignment]
    in_use = select(pu.c.id).where(pu.c.payment_method_id == PM.c.id,
                                   pu.c.status.in_(("pending", "processing", "requires_action"))).exists()
    with unit_of_work() as uow:
        ids: list[int] = list(uow.session.execute(
            select(PM.c.id).where(PM.c.status == "confirmed", PM.c.created_at < now - SETUP_LOOKBACK, ~in_use)
            .limit(limit)
        ).scalars().all())
        for card_id in ids:
            forget_in(uow.session, card_id)
        uow.commit()
    return len(ids)


def setup_succeeded(session: Session, setup_intent_id: str, payment_method: str | None) -> str:
    """Webhook setup_intent.succeeded: note which card a SetupIntent of ours saved; return the outcome."""
    row = session.execute(select(PM.c.id, PM.c.status).where(PM.c.setup_intent_id == setup_intent_id)).first()
    if row is None:
        return "unknown_setup_intent"
    if row.status != "setup" or not payment_method:
        return "already_known"
    taken = session.execute(select(PM.c.id).where(PM.c.gateway_payment_method_id == payment_method)).first()
    if taken is not None:
        return "already_known"
    session.execute(update(PM).where(PM.c.id == row.id)
                    .values(gateway_payment_method_id=payment_method, status="confirmed"))
    return "card_confirmed"
