"""Payment API request and response schemas (marshmallow); unknown fields are rejected, amounts are strings."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from credits.db import MAX_ROW_ID

AMOUNT = validate.Regexp(r"^[0-9]{1,13}(\.[0-9]{1,6})?$", error='an amount is a decimal string such as "10.00"')
PM_ID = validate.Regexp(r"^pm_[A-Za-z0-9_]{1,61}$", error="the payment method id Stripe.js returned (pm_...)")
REASON = validate.Length(min=1, max=500)
TICKET = validate.Length(max=64)


class CardIn(Schema):
    payment_method = fields.String(validate=PM_ID, metadata={
        "description": "absent: start a SetupIntent for a new card; given: save this card (after confirmCardSetup)"})


class CardSetupOrCardOut(Schema):
    setup_intent = fields.String(metadata={"description": "SetupIntent id (new card)"})
    client_secret = fields.String(metadata={"description": "for stripe.confirmCardSetup (new card)"})
    publishable_key = fields.String()
    stripe_js_url = fields.String()
    id = fields.String(metadata={"description": "payment method id (saved card)"})
    brand = fields.String()
    last4 = fields.String()
    exp_month = fields.Integer()
    exp_year = fields.Integer()
    saved_at = fields.DateTime()


class CardOut(Schema):
    id = fields.String(metadata={"description": "payment method id"})
    brand = fields.String()
    last4 = fields.String()
    exp_month = fields.Integer()
    exp_year = fields.Integer()
    saved_at = fields.DateTime(allow_none=True)


class CardsOut(Schema):
    payment_methods = fields.List(fields.Nested(CardOut))


class PurchaseIn(Schema):
    amount = fields.String(required=True, validate=AMOUNT,
                           metadata={"description": "a package or a custom amount, in the wallet's currency"})
    payment_method = fields.String(required=True, validate=PM_ID)
    remember = fields.Boolean(load_default=False, metadata={"description": "keep the card for later"})


class PurchaseLotOut(Schema):
    id = fields.Integer()
    expires_at = fields.DateTime()


class PurchaseOut(Schema):
    id = fields.Integer()
    kind = fields.String()
    status = fields.String(metadata={"description": "pending, requires_action, processing, succeeded or failed"})
    amount = fields.String()
    currency = fields.String()
    client_secret = fields.String(allow_none=True, metadata={
        "description": "when requires_action: pass to stripe.confirmCardPayment, then GET the purchase"})
    lot = fields.Nested(PurchaseLotOut, allow_none=True)
    failure_code = fields.String(allow_none=True)
    created_at = fields.DateTime()


class AutoRechargeIn(Schema):
    enabled = fields.Boolean(required=True)
    threshold = fields.String(validate=AMOUNT, allow_none=True)
    amount = fields.String(validate=AMOUNT, allow_none=True)
    payment_method = fields.String(validate=PM_ID, allow_none=True)
    monthly_cap = fields.String(validate=AMOUNT, allow_none=True)


class AutoRechargeOut(Schema):
    enabled = fields.Boolean()
    threshold = fields.String(allow_none=True)
    amount = fields.String(allow_none=True)
    payment_method = fields.String(allow_none=True)
    monthly_cap = fields.String(allow_none=True)
    currency = fields.String()
    consecutive_failures = fields.Integer()
    next_attempt_at = fields.DateTime(allow_none=True)
    disabled_reason = fields.String(allow_none=True)


class RefundIn(Schema):
    purchase_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_ROW_ID))
    amount = fields.String(required=True, validate=AMOUNT)
    reason = fields.String(required=True, validate=REASON)
    ticket = fields.String(validate=TICKET, allow_none=True)


class RejectIn(Schema):
    reason = fields.String(required=True, validate=REASON)


class RefundOut(Schema):
    id = fields.Integer()
    purchase_id = fields.Integer()
    amount = fields.String()
    currency = fields.String()
    status = fields.String(metadata={"description": "pending_approval, processing, succeeded, failed, rejected"})
    reason = fields.String()
    ticket = fields.String(allow_none=True)
    requested_by = fields.Integer(allow_none=True)
    approved_by = fields.Integer(allow_none=True)
    failure_reason = fields.String(allow_none=True)
    created_at = fields.DateTime()


class CreditNoteIn(Schema):
    account = fields.String(required=True, validate=validate.Length(min=1, max=320),
                            metadata={"description": "account number or email address"})
    amount = fields.String(required=True, validate=AMOUNT)
    reason = fields.String(required=True, validate=REASON)
    ticket = fields.String(validate=TICKET, allow_none=True)


class CreditNoteOut(Schema):
    lot_id = fields.Integer()
    amount = fields.String()
    source = fields.String()
    expires_at = fields.DateTime()
