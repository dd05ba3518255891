"""Payment errors: what can go wrong at the card gateway, and what the customer may be told about it."""

from __future__ import annotations

from typing import Any

from credits.errors import CreditsError


class PaymentError(CreditsError):
    """Base of every error the payment gateway port raises; catch it to handle any gateway failure."""

    status = 502
    code = "payment_error"
    title = "Payment failed"
    safe = False

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message, **extra)
        self.payment_intent_id: str | None = extra.get("payment_intent_id")


class CardDeclined(PaymentError):
    """The bank or the gateway refused the card; nothing was charged.

    The customer sees the title ("Your card was declined") and may try another card. The decline code
    (`decline_code`, for example "insufficient_funds" or "fraudulent") is for staff and logs only: showing
    fraud-related codes helps card testers, so it is never part of the message.
    """

    status = 402
    code = "card_declined"
    title = "Your card was declined"
    safe = True

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message or "Your card was declined. Try another card or contact your bank.", **extra)
        self.decline_code: str | None = extra.get("decline_code")
        self.charge_id: str | None = extra.get("charge_id")


class AuthenticationRequired(PaymentError):
    """An off-session charge needs the card holder to authenticate (3-D Secure); nothing was charged yet.

    Raised only by off-session payment intents (auto-recharge). The customer is told that their bank asks
    them to confirm the payment and gets a link to pay on-session; `client_secret` and `payment_method_id`
    let that page complete the same intent with Stripe.js.
    """

    status = 402
    code = "authentication_required"
    title = "Your bank asks you to confirm this payment"
    safe = True

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message or self.title, **extra)
        self.client_secret: str | None = extra.get("client_secret")
        self.payment_method_id: str | None = extra.get("payment_method_id")


class GatewayError(PaymentError):
    """The gateway answered with an error we did not expect (bad request, bad key, a 5xx).

    The message holds the gateway's words and is for logs only; the customer sees a generic
    "Payment failed" and support gets the request id.
    """

    code = "gateway_error"
    title = "Payment failed"


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached: the request was never sent, so nothing was charged.

    The customer may be told that the payment service is unavailable and to try again shortly.
    """

    status = 503
    code = "gateway_unavailable"
    title = "The payment service is unavailable"
    safe = True

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(
            message
            or "The payment service is unavailable right now and you have not been charged. "
            "Please try again in a few minutes.",
            **extra,
        )


class GatewayTimeout(GatewayError):
    """The request was sent but no answer came in time: the outcome is UNKNOWN.

    The operation may have happened at the gateway. Retry with the same idempotency key (the gateway then
    answers with the first outcome) or let reconciliation retrieve it; never retry with a new key. The
    customer is told that the payment is being confirmed and must not pay again yet.
    """

    status = 504
    code = "gateway_timeout"
    title = "The payment is being confirmed"
    safe = True

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(
            message or "We could not confirm your payment yet. Do not pay again: we will update you shortly.",
            **extra,
        )


class GatewayNotFound(GatewayError):
    """The gateway does not know the customer, payment method or intent named; shown as "not found"."""

    status = 404
    code = "gateway_object_not_found"
    title = "Not found"
    safe = True


class RefundFailed(GatewayError):
    """The gateway refused the refund (already refunded, amount too large, charge disputed, ...).

    Staff see the title and the reason in `extra["reason"]`; the credit taken for the refund is restored by
    the caller. The customer is told the refund could not be made and support will contact them.
    """

    status = 502
    code = "refund_failed"
    title = "The refund could not be made"
    safe = True


class WebhookError(PaymentError):
    """A webhook request we refuse: the sender gets 400 and nothing changes. Never shown to a customer."""

    status = 400
    code = "invalid_webhook"
    title = "Invalid webhook"
    safe = True


class SignatureMissing(WebhookError):
    """No Stripe-Signature header, or one without a timestamp or a v1 signature."""

    code = "webhook_signature_missing"
    title = "Missing webhook signature"


class SignatureMismatch(WebhookError):
    """No v1 signature in the header matches the HMAC of the raw body with our secret: forged or altered."""

    code = "webhook_signature_mismatch"
    title = "Invalid webhook signature"


class SignatureExpired(WebhookError):
    """The signature's timestamp is outside the tolerance: a stale or replayed delivery."""

    code = "webhook_signature_expired"
    title = "Stale webhook signature"


class InvalidWebhookPayload(WebhookError):
    """The signature is valid but the body is not a Stripe event (not JSON, no id or type)."""

    code = "webhook_payload_invalid"
    title = "Invalid webhook payload"
