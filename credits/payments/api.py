"""Payment routes: customer cards, purchases and auto-recharge; staff refunds and credit notes; the Stripe webhook."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint as FlaskBlueprint
from flask import jsonify, request
from flask.typing import ResponseReturnValue

from credits import money
from credits.payments import auto_recharge, cards, refunds, schemas, service, webhooks
from credits.web.api import SESSION_SECURITY as SECURITY
from credits.web.api import Blueprint
from credits.web.auth import current_user_id, login_required, staff_required

blp = Blueprint("payments", __name__, url_prefix="/api/v1/me",
                description="Customer payments: cards (SetupIntent), purchases, auto-recharge (DESIGN §6)")
staff_blp = Blueprint("staff_payments", __name__, url_prefix="/api/v1/staff",
                      description="Staff money corrections: refunds (second approver above a limit), credit notes")
hooks = FlaskBlueprint("webhooks", __name__)


def _money(value: int | None) -> str | None:
    return None if value is None else money.format_micro(value)


def purchase_body(p: service.PurchaseView) -> dict[str, Any]:
    lot = {"id": p.lot_id, "expires_at": p.lot_expires_at} if p.lot_id is not None else None
    return {"id": p.id, "kind": p.kind, "status": p.status, "amount": money.format_micro(p.amount),
            "currency": p.currency, "client_secret": p.client_secret, "lot": lot, "failure_code": p.failure_code,
            "created_at": p.created_at}


def refund_body(r: refunds.RefundView) -> dict[str, Any]:
    return {"id": r.id, "purchase_id": r.purchase_id, "amount": money.format_micro(r.amount), "currency": r.currency,
            "status": r.status, "reason": r.reason, "ticket": r.ticket, "requested_by": r.requested_by,
            "approved_by": r.approved_by, "failure_reason": r.failure_reason, "created_at": r.created_at}


def auto_recharge_body(a: auto_recharge.AutoRechargeView) -> dict[str, Any]:
    return {"enabled": a.enabled, "threshold": _money(a.threshold), "amount": _money(a.amount),
            "payment_method": a.payment_method, "monthly_cap": _money(a.monthly_cap), "currency": a.currency,
            "consecutive_failures": a.consecutive_failures, "next_attempt_at": a.next_attempt_at,
            "disabled_reason": a.disabled_reason}


# ---------------------------------------------------------------- customer


@blp.route("/payment-methods", methods=["POST"])
@login_required
@blp.doc(security=SECURITY)
@blp.arguments(schemas.CardIn)
@blp.response(201, schemas.CardSetupOrCardOut)
def add_card(body: dict[str, Any]) -> dict[str, Any]:
    """Without a body: start a SetupIntent for a new card ({setup_intent, client_secret, publishable_key,
    stripe_js_url}; the page calls stripe.confirmCardSetup). With `payment_method`: save that card."""
    if body.get("payment_method"):
        card = cards.save_card(current_user_id(), body["payment_method"])
        return asdict(card)
    setup = cards.start_setup(current_user_id())
    return {"setup_intent": setup.setup_intent_id, "client_secret": setup.client_secret,
            "publishable_key": setup.publishable_key, "stripe_js_url": setup.stripe_js_url}


@blp.route("/payment-methods", methods=["GET"])
@login_required
@blp.doc(security=SECURITY)
@blp.response(200, schemas.CardsOut)
def list_cards() -> dict[str, Any]:
    """The saved cards: brand, last 4 digits, expiry."""
    return {"payment_methods": [asdict(c) for c in cards.list_cards(current_user_id())]}


@blp.route("/payment-methods/<string:payment_method>", methods=["DELETE"])
@login_required
@blp.doc(security=SECURITY)
@blp.response(204)
def remove_card(payment_method: str) -> None:
    """Remove a saved card (auto-recharge on it is switched off)."""
    cards.remove_card(current_user_id(), payment_method)


@blp.route("/purchases", methods=["POST"])
@login_required
@blp.doc(security=SECURITY)
@blp.arguments(schemas.PurchaseIn)
@blp.response(201, schemas.PurchaseOut)
def create_purchase(body: dict[str, Any]) -> dict[str, Any]:
    """Buy credit: charges the card server-side. `succeeded`: the credit is granted; `requires_action`: pass
    `client_secret` to stripe.confirmCardPayment, then GET the purchase. A declined card is 402."""
    view = service.purchase(current_user_id(), body["amount"], body["payment_method"], remember=body["remember"],
                            client_key=request.headers.get("Idempotency-Key"))
    return purchase_body(view)


@blp.route("/purchases/<int:purchase_id>", methods=["GET"])
@login_required
@blp.doc(security=SECURITY)
@blp.response(200, schemas.PurchaseOut)
def get_purchase(purchase_id: int) -> dict[str, Any]:
    """A purchase, settled with the gateway first while it is open (after 3-D Secure)."""
    return purchase_body(service.get_purchase(current_user_id(), purchase_id))


@blp.route("/auto-recharge", methods=["PUT"])
@login_required
@blp.doc(security=SECURITY)
@blp.arguments(schemas.AutoRechargeIn)
@blp.response(200, schemas.AutoRechargeOut)
def put_auto_recharge(body: dict[str, Any]) -> dict[str, Any]:
    """Auto-recharge settings: below `threshold`, charge `amount` to the saved card, at most `monthly_cap` a month."""
    view = auto_recharge.configure(current_user_id(), enabled=body["enabled"], threshold=body.get("threshold"),
                                   amount=body.get("amount"), payment_method=body.get("payment_method"),
                                   monthly_cap=body.get("monthly_cap"))
    return auto_recharge_body(view)


@blp.route("/auto-recharge", methods=["GET"])
@login_required
@blp.doc(security=SECURITY)
@blp.response(200, schemas.AutoRechargeOut)
def get_auto_recharge() -> dict[str, Any]:
    """The auto-recharge settings and their state (failures, back-off, why it was switched off)."""
    return auto_recharge_body(auto_recharge.get_settings(current_user_id()))


# ---------------------------------------------------------------- staff


@staff_blp.route("/refunds", methods=["POST"])
@staff_required("refunds.create")
@staff_blp.doc(security=SECURITY)
@staff_blp.arguments(schemas.RefundIn)
@staff_blp.response(201, schemas.RefundOut)
def create_refund(body: dict[str, Any]) -> dict[str, Any]:
    """Refund (part of) a purchase; the credit leaves the wallet now. Above the approval limit the refund waits
    (`pending_approval`) for a second staff member."""
    view = refunds.request_refund(body["purchase_id"], body["amount"], body["reason"], actor_id=current_user_id(),
                                  ticket=body.get("ticket"))
    return refund_body(view)


@staff_blp.route("/refunds/<int:refund_id>", methods=["GET"])
@staff_required("accounts.read")
@staff_blp.doc(security=SECURITY)
@staff_blp.response(200, schemas.RefundOut)
def get_refund(refund_id: int) -> dict[str, Any]:
    """A refund and its state."""
    return refund_body(refunds.get_refund(refund_id))


@staff_blp.route("/refunds/<int:refund_id>/approve", methods=["POST"])
@staff_required("refunds.approve")
@staff_blp.doc(security=SECURITY)
@staff_blp.response(200, schemas.RefundOut)
def approve_refund(refund_id: int) -> dict[str, Any]:
    """Approve a refund another staff member asked for, and send it to the gateway."""
    return refund_body(refunds.approve_refund(refund_id, approver_id=current_user_id()))


@staff_blp.route("/refunds/<int:refund_id>/reject", methods=["POST"])
@staff_required("refunds.approve")
@staff_blp.doc(security=SECURITY)
@staff_blp.arguments(schemas.RejectIn)
@staff_blp.response(200, schemas.RefundOut)
def reject_refund(body: dict[str, Any], refund_id: int) -> dict[str, Any]:
    """Turn down a refund waiting for approval; the credit returns to the wallet."""
    return refund_body(refunds.reject_refund(refund_id, approver_id=current_user_id(), reason=body["reason"]))


@staff_blp.route("/credit-notes", methods=["POST"])
@staff_required("credit_notes.create")
@staff_blp.doc(security=SECURITY)
@staff_blp.arguments(schemas.CreditNoteIn)
@staff_blp.response(201, schemas.CreditNoteOut)
def create_credit_note(body: dict[str, Any]) -> dict[str, Any]:
    """Grant goodwill credit to an account (by account number or email), with a reason."""
    lot = refunds.issue_credit_note(body["account"], body["amount"], body["reason"], actor_id=current_user_id(),
                                    ticket=body.get("ticket"))
    return {"lot_id": lot.id, "amount": money.format_micro(lot.granted), "source": lot.source,
            "expires_at": lot.expires_at}


# ---------------------------------------------------------------- webhooks


@hooks.post("/webhooks/stripe")
def stripe_webhook() -> ResponseReturnValue:
    """Stripe events, verified on the raw body (bad signature: 400, nothing changes)."""
    result = webhooks.handle(request.get_data(), request.headers.get("Stripe-Signature"))
    return jsonify(received=True, duplicate=result.duplicate)
