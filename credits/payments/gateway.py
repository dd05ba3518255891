"""The payment gateway port: what the service needs from a card processor, in small frozen dataclasses.

Two adapters implement it: `StripeGateway` (the official library, against Stripe or localstripe) and
`FakeGateway` (in-process, for unit tests). tests/integration/test_gateway_contract.py holds both to one
contract. Conventions of every operation:

- Amounts are `int` minor units (cents) of an ISO 4217 currency given in upper case ("USD"); never float.
- Every mutating call takes OUR idempotency key (at most 255 characters, stable for one business operation,
  for example "purchase:<id>:charge"). Retrying with the same key and the same parameters returns the first
  result; the same key with other parameters raises `credits.errors.IdempotencyConflict`.
  Stripe honours keys server-side; localstripe ignores them (see the contract tests): the ledger keeps its
  own unique keys so a replay never moves money twice.
- Metadata is free text (at most 50 keys, keys up to 40 characters, values up to 500): anything that is not
  a parameter both Stripe and localstripe accept goes there.
- Errors are those of `credits.payments.errors`: `CardDeclined`, `AuthenticationRequired`,
  `GatewayUnavailable` (not sent, nothing happened), `GatewayTimeout` (outcome unknown), `GatewayNotFound`,
  `RefundFailed`, `GatewayError`, and `WebhookError` subclasses for webhooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from credits import money
from credits.errors import ValidationError

PaymentIntentStatus = Literal[
    "succeeded",
    "requires_action",
    "requires_payment_method",
    "processing",
    "canceled",
    # Not reached by our flow (intents are confirmed at creation, captured automatically), but the gateway
    # may report them for intents made elsewhere.
    "requires_confirmation",
    "requires_capture",
]
SetupIntentStatus = Literal[
    "requires_payment_method", "requires_confirmation", "requires_action", "processing", "canceled", "succeeded"
]
RefundStatus = Literal["pending", "requires_action", "succeeded", "failed", "canceled"]

#: How old a webhook signature may be, in seconds (Stripe's libraries use the same default).
DEFAULT_WEBHOOK_TOLERANCE_S = 300
MAX_IDEMPOTENCY_KEY = 255
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LEN = 40
MAX_METADATA_VALUE_LEN = 500


@dataclass(frozen=True)
class Customer:
    """A customer record at the gateway; payment methods are attached to it."""

    id: str
    email: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SetupIntentResult:
    """A SetupIntent: the browser confirms it with Stripe.js (`confirmCardSetup`) to save a card."""

    id: str
    client_secret: str
    status: SetupIntentStatus
    payment_method: str | None = None
    customer: str | None = None


@dataclass(frozen=True)
class PaymentMethodInfo:
    """A saved card as we may store and show it: never the number, only brand, last 4 digits and expiry."""

    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    customer: str | None = None


@dataclass(frozen=True)
class PaymentIntentResult:
    """A payment intent as the gateway reports it.

    `amount_minor` is what was asked for; credit is granted only when `status == "succeeded"`.
    `latest_charge` is the charge id (Stripe sends an id, localstripe a whole object: both are reduced to
    the id). `decline_code` / `error_code` / `error_message` describe the last failed attempt, if any.
    """

    id: str
    status: PaymentIntentStatus
    amount_minor: int
    currency: str
    client_secret: str | None = None
    payment_method: str | None = None
    customer: str | None = None
    latest_charge: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    decline_code: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: When the gateway created it (Unix seconds), if it said.
    created: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def requires_action(self) -> bool:
        return self.status == "requires_action"


@dataclass(frozen=True)
class RefundResult:
    """A refund of (part of) a payment intent; `succeeded` or `pending` both mean the gateway accepted it."""

    id: str
    status: RefundStatus
    amount_minor: int
    currency: str
    payment_intent: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookEvent:
    """A verified gateway event: its id (store it once), type, creation time and the object it is about."""

    id: str
    type: str
    created: int
    data_object: Mapping[str, Any]
    livemode: bool = False
    payload: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class PaymentGateway(Protocol):
    """The card gateway as the service sees it. Card numbers never pass through it: Stripe.js collects them."""

    def create_customer(
        self, *, email: str | None = None, metadata: Mapping[str, str] | None = None, idempotency_key: str
    ) -> Customer:
        """Create a gateway customer to hold saved cards.

        Raises GatewayUnavailable, GatewayTimeout, GatewayError.
        """
        ...

    def create_setup_intent(
        self, customer_id: str, *, metadata: Mapping[str, str] | None = None, idempotency_key: str
    ) -> SetupIntentResult:
        """Create a SetupIntent for a card usable off-session, for the browser to confirm with Stripe.js.

        The result's client_secret goes to the page, which calls `confirmCardSetup`; 3-D Secure, if the card
        asks for it, happens there. Raises GatewayNotFound for an unknown customer, GatewayUnavailable, ...
        """
        ...

    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentResult:
        """Fetch a SetupIntent (its status and the payment method it saved). Raises GatewayNotFound."""
        ...

    def attach_payment_method(
        self, payment_method_id: str, customer_id: str, *, idempotency_key: str
    ) -> PaymentMethodInfo:
        """Attach a payment method to a customer (explicitly: localstripe's SetupIntents do not).

        Attaching one already attached to the same customer returns it unchanged. Raises CardDeclined when
        the card is refused at attach time, GatewayNotFound for unknown ids.
        """
        ...

    def list_payment_methods(self, customer_id: str) -> list[PaymentMethodInfo]:
        """List the customer's cards (brand, last4, expiry), at most 100. Raises GatewayNotFound."""
        ...

    def detach_payment_method(self, payment_method_id: str, *, idempotency_key: str) -> None:
        """Detach a card from its customer; it can no longer be charged. Raises GatewayNotFound."""
        ...

    def create_payment_intent(
        self,
        *,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method_id: str,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str,
        off_session: bool = False,
    ) -> PaymentIntentResult:
        """Create AND confirm a card payment server-side, captured automatically.

        Outcomes:
        - `succeeded`: the money is taken; grant the credit.
        - On-session (`off_session=False`) and the bank wants 3-D Secure: a result with status
          `requires_action` and its client_secret, which the page passes to `confirmCardPayment`; settle it
          later with `retrieve_payment_intent` or the webhook.
        - Off-session and the bank wants authentication: raises AuthenticationRequired (with the intent id,
          client_secret and payment method), whether the gateway answered `authentication_required` (Stripe)
          or left the intent in `requires_action` (localstripe). Nothing was charged; email the customer a
          link to pay on-session.
        - Declined: raises CardDeclined; nothing was charged.
        - GatewayUnavailable: nothing was sent. GatewayTimeout: unknown; retry with the SAME key or reconcile.
        """
        ...

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        """Fetch the current state of an intent (after 3-D Secure, or for reconciliation). Raises GatewayNotFound."""
        ...

    def list_payment_intents(self, *, created_after: datetime, limit: int = 100) -> list[PaymentIntentResult]:
        """List intents created at or after `created_after`, newest first, at most `limit` (1-1000), any status.

        For reconciliation: the report compares the succeeded ones with granted lots, and the job finds the
        intent of a purchase whose answer was lost (by `metadata["purchase_id"]`). Raises GatewayUnavailable,
        GatewayTimeout, GatewayError.
        """
        ...

    def refund(
        self,
        payment_intent_id: str,
        *,
        amount_minor: int,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str,
    ) -> RefundResult:
        """Refund `amount_minor` of a succeeded intent (always an explicit amount: localstripe would refund the
        whole charge again where Stripe refunds what is left).

        The ledger decides what is refundable; localstripe accepts over-refunds, Stripe and the fake refuse
        them. Raises RefundFailed when the gateway refuses (the caller restores the credit),
        GatewayUnavailable (nothing was sent: restore too), GatewayTimeout (unknown: retry with the same key),
        GatewayNotFound.
        """
        ...

    def construct_webhook_event(self, raw_body: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the Stripe-Signature header on the exact raw body with the webhook secret, then parse it.

        Raises SignatureMissing (no header or no t=/v1=), SignatureMismatch (forged or altered),
        SignatureExpired (older than the tolerance), InvalidWebhookPayload (not an event).
        """
        ...


def check_idempotency_key(key: str) -> str:
    """Return the key if it is usable at the gateway; raise ValidationError otherwise."""
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationError(f"an idempotency key is a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters")
    return key


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return metadata as a plain dict if the gateway will take it (Stripe's limits); raise ValidationError."""
    if metadata is None:
        return {}
    if len(metadata) > MAX_METADATA_KEYS:
        raise ValidationError(f"metadata holds at most {MAX_METADATA_KEYS} keys", field="metadata")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY_LEN or "[" in key or "]" in key:
            raise ValidationError(f"bad metadata key {str(key)[:50]!r}", field="metadata")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_LEN:
            raise ValidationError(
                f"metadata value of {key!r} must be a string of at most 500 characters", field="metadata"
            )
        out[key] = value
    return out


def check_amount_minor(amount_minor: int, currency: str) -> int:
    """Return the amount if it is a positive int of minor units within money.MAX_AMOUNT; raise ValidationError."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValidationError("a gateway amount is a positive integer of minor units", field="amount")
    money.check_amount(money.minor_to_micro(amount_minor, currency))
    return amount_minor


MAX_LIST_LIMIT = 1000


def check_list_args(created_after: datetime, limit: int) -> int:
    """Return `created_after` as Unix seconds if the list arguments are usable; raise ValidationError otherwise."""
    if not isinstance(created_after, datetime) or created_after.tzinfo is None:
        raise ValidationError("created_after is an aware datetime", field="created_after")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValidationError(f"limit is between 1 and {MAX_LIST_LIMIT}", field="limit")
    return int(created_after.timestamp())


def check_refund_amount(amount_minor: int) -> int:
    """Return the amount if it is a positive int of minor units; raise ValidationError otherwise."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValidationError("a refund amount is a positive integer of minor units", field="amount")
    return amount_minor
