"""FakeGateway: the payment gateway port in memory, deterministic, with knobs for every failure tests need.

It behaves like Stripe where localstripe does not (idempotency keys honoured, over-refunds refused, disputes
and charge/refund events exist) and takes the same test card numbers as both. Methods that stand in for the
browser (Stripe.js) are marked as such; the service never calls them.

    gw = FakeGateway(webhook_secret="whsec_test")
    pm = gw.create_card_payment_method("4242424242424242", 12, 2030)     # what Stripe.js would do
    gw.decline_next("insufficient_funds")                                   # the next payment is declined
    hook = gw.open_dispute(pi.id)                                           # a signed charge.dispute.created
    client.post("/webhooks/stripe", data=hook.payload, headers={"Stripe-Signature": hook.signature_header})
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from credits import clock, money
from credits.errors import IdempotencyConflict
from credits.payments import signing
from credits.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    GatewayError,
    GatewayNotFound,
    GatewayTimeout,
    GatewayUnavailable,
    RefundFailed,
)
from credits.payments.gateway import (
    DEFAULT_WEBHOOK_TOLERANCE_S,
    Customer,
    PaymentIntentResult,
    PaymentIntentStatus,
    PaymentMethodInfo,
    RefundResult,
    SetupIntentResult,
    SetupIntentStatus,
    WebhookEvent,
    check_amount_minor,
    check_idempotency_key,
    check_list_args,
    check_metadata,
    check_refund_amount,
)

T = TypeVar("T")
FAKE_WEBHOOK_SECRET = "whsec_fake_gateway"  # noqa: S105 - a test secret

# Stripe's test cards, behaving as on localstripe (see shared/notes/localstripe.md).
DECLINED_AT_ATTACH = frozenset({"4000000000000002", "4000000000009995", "4000000000000069", "4000000000000127"})
DECLINED_AT_CHARGE = frozenset({"4000000000000341"})
REQUIRES_AUTHENTICATION = frozenset({"4000002500003155", "4000002760003184", "4000000000003220"})

FaultKind = Literal["decline", "authenticate", "timeout", "unavailable", "refund_fails"]


@dataclass(frozen=True)
class SignedWebhook:
    """A webhook request as the gateway would send it: POST `payload` with header Stripe-Signature."""

    payload: bytes
    signature_header: str
    event: Mapping[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.event["id"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Stripe-Signature": self.signature_header, "Content-Type": "application/json"}


@dataclass
class _Fault:
    kind: FaultKind
    operation: str | None
    data: dict[str, Any]


@dataclass
class _Card:
    id: str
    behaviour: str  # "ok", "decline_attach", "decline_charge", "authenticate"
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    customer: str | None = None


@dataclass
class _SetupIntent:
    id: str
    customer: str
    status: SetupIntentStatus
    metadata: dict[str, str]
    payment_method: str | None = None


@dataclass
class _PaymentIntent:
    id: str
    amount: int
    currency: str
    customer: str
    payment_method: str | None
    metadata: dict[str, str]
    status: PaymentIntentStatus
    created: int
    latest_charge: str | None = None
    refunded: int = 0
    decline_code: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class _Record:
    fingerprint: tuple[str, str]
    result: Any = None
    error: Exception | None = None


@dataclass
class _Dispute:
    id: str
    payment_intent: str
    charge: str
    amount: int
    currency: str
    reason: str
    status: str
    created: int


@dataclass
class FakeCall:
    """One call the fake received, for tests that count charges ("exactly one")."""

    operation: str
    idempotency_key: str | None
    params: dict[str, Any] = field(default_factory=dict)


class FakeGateway:
    """In-process PaymentGateway. Thread-safe; ids are deterministic per instance (pi_fake_000001, ...)."""

    def __init__(
        self, *, webhook_secret: str = FAKE_WEBHOOK_SECRET, webhook_tolerance_s: int = DEFAULT_WEBHOOK_TOLERANCE_S
    ) -> None:
        self.webhook_secret = webhook_secret
        self.webhook_tolerance_s = webhook_tolerance_s
        self._lock = threading.RLock()
        self._counters: dict[str, int] = {}
        self._customers: dict[str, Customer] = {}
        self._cards: dict[str, _Card] = {}
        self._setup_intents: dict[str, _SetupIntent] = {}
        self._intents: dict[str, _PaymentIntent] = {}
        self._refunds: dict[str, RefundResult] = {}
        self._disputes: dict[str, _Dispute] = {}
        self._idempotency: dict[str, _Record] = {}
        self._faults: list[_Fault] = []
        #: Every call received, in order.
        self.calls: list[FakeCall] = []
        #: Every event the gateway would have sent, in order (event bodies; sign one with `signed()`).
        self.events: list[dict[str, Any]] = []

    # -- knobs ---------------------------------------------------------------------------------------------------

    def decline_next(self, decline_code: str = "generic_decline") -> None:
        """Make the next create_payment_intent decline (CardDeclined with this decline code)."""
        self._add_fault("decline", "create_payment_intent", decline_code=decline_code)

    def require_authentication_next(self) -> None:
        """Make the next create_payment_intent need 3-D Secure (requires_action; off-session AuthenticationRequired)."""
        self._add_fault("authenticate", "create_payment_intent")

    def time_out_next(self, operation: str | None = None, *, happened: bool = True) -> None:
        """Make the next mutating call (or the next `operation`) raise GatewayTimeout.

        `happened=True` (the case to fear): the gateway did the work and remembers it under the idempotency
        key, so a retry with the same key returns the result. `happened=False`: nothing was done.
        """
        self._add_fault("timeout", operation, happened=happened)

    def unavailable_next(self, operation: str | None = None) -> None:
        """Make the next mutating call (or the next `operation`) raise GatewayUnavailable; nothing is done."""
        self._add_fault("unavailable", operation)

    def fail_next_refund(self, reason: str = "charge_disputed") -> None:
        """Make the next refund raise RefundFailed with this reason; nothing is refunded."""
        self._add_fault("refund_fails", "refund", reason=reason)

    def _add_fault(self, kind: FaultKind, operation: str | None, **data: Any) -> None:
        with self._lock:
            self._faults.append(_Fault(kind, operation, data))

    def _take_fault(self, operation: str, kinds: tuple[FaultKind, ...]) -> _Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.kind in kinds and fault.operation in (None, operation):
                return self._faults.pop(i)
        return None

    # -- the port: customers and cards ---------------------------------------------------------------------------

    def create_customer(
        self, *, email: str | None = None, metadata: Mapping[str, str] | None = None, idempotency_key: str
    ) -> Customer:
        meta = check_metadata(metadata)

        def run() -> Customer:
            customer = Customer(id=self._new_id("cus"), email=email, metadata=meta)
            self._customers[customer.id] = customer
            self._emit("customer.created", {"id": customer.id, "object": "customer", "email": email, "metadata": meta})
            return customer

        return self._idempotent("create_customer", idempotency_key, {"email": email, "metadata": meta}, run)

    def create_setup_intent(
        self, customer_id: str, *, metadata: Mapping[str, str] | None = None, idempotency_key: str
    ) -> SetupIntentResult:
        meta = check_metadata(metadata)

        def run() -> SetupIntentResult:
            self._customer(customer_id)
            si = _SetupIntent(self._new_id("seti"), customer_id, "requires_payment_method", meta)
            self._setup_intents[si.id] = si
            return self._si_result(si)

        return self._idempotent(
            "create_setup_intent", idempotency_key, {"customer": customer_id, "metadata": meta}, run
        )

    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentResult:
        with self._lock:
            self.calls.append(FakeCall("retrieve_setup_intent", None, {"id": setup_intent_id}))
            return self._si_result(self._setup_intent(setup_intent_id))

    def attach_payment_method(
        self, payment_method_id: str, customer_id: str, *, idempotency_key: str
    ) -> PaymentMethodInfo:
        def run() -> PaymentMethodInfo:
            card = self._card(payment_method_id)
            self._customer(customer_id)
            if card.customer not in (None, customer_id):
                raise GatewayError("the payment method belongs to another customer", gateway_code="invalid")
            if card.behaviour == "decline_attach":
                raise CardDeclined(decline_code="generic_decline")
            card.customer = customer_id
            self._emit("payment_method.attached", self._pm_object(card))
            return self._pm_info(card)

        return self._idempotent(
            "attach_payment_method", idempotency_key, {"pm": payment_method_id, "customer": customer_id}, run
        )

    def list_payment_methods(self, customer_id: str) -> list[PaymentMethodInfo]:
        with self._lock:
            self.calls.append(FakeCall("list_payment_methods", None, {"customer": customer_id}))
            self._customer(customer_id)
            return [self._pm_info(c) for c in self._cards.values() if c.customer == customer_id]

    def detach_payment_method(self, payment_method_id: str, *, idempotency_key: str) -> None:
        def run() -> None:
            card = self._card(payment_method_id)
            if card.customer is None:
                raise GatewayError("the payment method is not attached to a customer", gateway_code="invalid")
            card.customer = None
            self._emit("payment_method.detached", self._pm_object(card))

        self._idempotent("detach_payment_method", idempotency_key, {"pm": payment_method_id}, run)

    # -- the port: payments --------------------------------------------------------------------------------------

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
        money.check_currency(currency)
        check_amount_minor(amount_minor, currency)
        meta = check_metadata(metadata)
        params = {
            "amount": amount_minor,
            "currency": currency,
            "customer": customer_id,
            "pm": payment_method_id,
            "metadata": meta,
            "off_session": off_session,
        }

        def run() -> PaymentIntentResult:
            self._customer(customer_id)
            card = self._card(payment_method_id)
            if card.customer not in (None, customer_id) or (off_session and card.customer != customer_id):
                raise GatewayError("the payment method is not attached to this customer", gateway_code="invalid")
            pi = _PaymentIntent(
                id=self._new_id("pi"),
                amount=amount_minor,
                currency=currency,
                customer=customer_id,
                payment_method=payment_method_id,
                metadata=meta,
                status="requires_confirmation",
                created=self._now(),
            )
            self._intents[pi.id] = pi
            fault = self._take_fault("create_payment_intent", ("decline", "authenticate"))
            if (fault and fault.kind == "decline") or card.behaviour in ("decline_charge", "decline_attach"):
                code = fault.data["decline_code"] if fault else "generic_decline"
                self._fail(pi, code)
                raise CardDeclined(
                    payment_intent_id=pi.id, decline_code=code, charge_id=pi.latest_charge, error_code="card_declined"
                )
            if (fault and fault.kind == "authenticate") or card.behaviour == "authenticate":
                pi.status = "requires_action"
                if off_session:
                    raise AuthenticationRequired(
                        payment_intent_id=pi.id, client_secret=self._secret(pi.id), payment_method_id=pi.payment_method
                    )
                return self._pi_result(pi)
            self._succeed(pi)
            return self._pi_result(pi)

        return self._idempotent("create_payment_intent", idempotency_key, params, run)

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        with self._lock:
            self.calls.append(FakeCall("retrieve_payment_intent", None, {"id": payment_intent_id}))
            return self._pi_result(self._intent(payment_intent_id))

    def list_payment_intents(self, *, created_after: datetime, limit: int = 100) -> list[PaymentIntentResult]:
        since = check_list_args(created_after, limit)
        with self._lock:
            self.calls.append(FakeCall("list_payment_intents", None, {"created_after": since, "limit": limit}))
            found = [pi for pi in self._intents.values() if pi.created >= since]
            # Newest first, as Stripe lists; ids break ties between intents of the same second.
            found.sort(key=lambda pi: (pi.created, pi.id), reverse=True)
            return [self._pi_result(pi) for pi in found[:limit]]

    def refund(
        self,
        payment_intent_id: str,
        *,
        amount_minor: int,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str,
    ) -> RefundResult:
        check_refund_amount(amount_minor)
        meta = check_metadata(metadata)

        def run() -> RefundResult:
            pi = self._intent(payment_intent_id)
            fault = self._take_fault("refund", ("refund_fails",))
            if fault:
                raise RefundFailed(reason=fault.data["reason"], payment_intent_id=pi.id)
            if pi.status != "succeeded":
                raise RefundFailed("the payment did not succeed", reason="not_succeeded", payment_intent_id=pi.id)
            left = pi.amount - pi.refunded
            amount = amount_minor
            if amount > left:
                raise RefundFailed(
                    f"refund of {amount} exceeds the {left} left", reason="amount_too_large", payment_intent_id=pi.id
                )
            pi.refunded += amount
            refund = RefundResult(
                id=self._new_id("re"),
                status="succeeded",
                amount_minor=amount,
                currency=pi.currency,
                payment_intent=pi.id,
                metadata=meta,
            )
            self._refunds[refund.id] = refund
            self._emit("charge.refunded", self._charge_object(pi))
            self._emit("refund.created", self._refund_object(refund))
            return refund

        return self._idempotent(
            "refund", idempotency_key, {"pi": payment_intent_id, "amount": amount_minor, "metadata": meta}, run
        )

    # -- the port: webhooks --------------------------------------------------------------------------------------

    def construct_webhook_event(self, raw_body: bytes, signature_header: str | None) -> WebhookEvent:
        return signing.construct_event(
            raw_body, signature_header, self.webhook_secret, tolerance_s=self.webhook_tolerance_s
        )

    # -- browser stand-ins (Stripe.js does these in production; the service never calls them) --------------------

    def create_card_payment_method(self, number: str, exp_month: int, exp_year: int, cvc: str = "123") -> str:
        """Tokenise a test card as Stripe.js would; return the payment method id. Only the last 4 digits are kept."""
        digits = number.replace(" ", "").replace("-", "")
        if not digits.isdigit() or not 13 <= len(digits) <= 19 or not 1 <= exp_month <= 12 or len(cvc) not in (3, 4):
            raise GatewayError("invalid card details", gateway_code="invalid_card")
        if digits in DECLINED_AT_ATTACH:
            behaviour = "decline_attach"
        elif digits in DECLINED_AT_CHARGE:
            behaviour = "decline_charge"
        elif digits in REQUIRES_AUTHENTICATION:
            behaviour = "authenticate"
        else:
            behaviour = "ok"
        with self._lock:
            card = _Card(self._new_id("pm"), behaviour, _brand(digits), digits[-4:], exp_month, exp_year)
            self._cards[card.id] = card
            return card.id

    def confirm_setup_intent(self, setup_intent_id: str, payment_method_id: str) -> SetupIntentResult:
        """Confirm a SetupIntent with a card, as `stripe.confirmCardSetup` does (before any 3-D Secure dialog).

        Like localstripe, it does not attach the card to the customer: the service attaches it explicitly.
        Raises CardDeclined for a card refused at setup (the intent is then canceled).
        """
        with self._lock:
            si = self._setup_intent(setup_intent_id)
            card = self._card(payment_method_id)
            si.payment_method = card.id
            if card.behaviour == "decline_attach":
                si.status = "canceled"
                raise CardDeclined(decline_code="generic_decline")
            if card.behaviour == "authenticate":
                si.status = "requires_action"
            else:
                self._setup_succeeded(si)
            return self._si_result(si)

    def authenticate_setup_intent(self, setup_intent_id: str, *, success: bool = True) -> SetupIntentResult:
        """Complete (or fail) the 3-D Secure dialog of a SetupIntent, as Stripe.js does."""
        with self._lock:
            si = self._setup_intent(setup_intent_id)
            if si.status != "requires_action":
                raise GatewayError("the setup intent does not require action", gateway_code="unexpected_state")
            if success:
                self._setup_succeeded(si)
            else:
                si.status, si.payment_method = "requires_payment_method", None
            return self._si_result(si)

    def authenticate_payment_intent(self, payment_intent_id: str, *, success: bool = True) -> PaymentIntentResult:
        """Complete (or fail) 3-D Secure for an intent in requires_action, as `stripe.confirmCardPayment` does."""
        with self._lock:
            pi = self._intent(payment_intent_id)
            if pi.status != "requires_action":
                raise GatewayError("the payment intent does not require action", gateway_code="unexpected_state")
            if success:
                self._succeed(pi)
            else:
                pi.status, pi.payment_method = "requires_payment_method", None
                pi.error_code = "payment_intent_authentication_failure"
                pi.error_message = "The provided PaymentMethod has failed authentication."
                self._emit("payment_intent.payment_failed", self._pi_object(pi))
            return self._pi_result(pi)

    # -- disputes and signed events ------------------------------------------------------------------------------

    def open_dispute(
        self, payment_intent_id: str, *, amount_minor: int | None = None, reason: str = "fraudulent"
    ) -> SignedWebhook:
        """Open a dispute (chargeback) on a succeeded payment; return the signed charge.dispute.created request."""
        with self._lock:
            pi = self._intent(payment_intent_id)
            if pi.status != "succeeded" or pi.latest_charge is None:
                raise GatewayError("only a succeeded payment can be disputed", gateway_code="unexpected_state")
            dispute = _Dispute(
                id=self._new_id("dp"),
                payment_intent=pi.id,
                charge=pi.latest_charge,
                amount=pi.amount if amount_minor is None else amount_minor,
                currency=pi.currency,
                reason=reason,
                status="needs_response",
                created=self._now(),
            )
            self._disputes[dispute.id] = dispute
            return self.signed(self._emit("charge.dispute.created", self._dispute_object(dispute)))

    def close_dispute(self, dispute_id: str, *, won: bool) -> SignedWebhook:
        """Close a dispute as won (funds reinstated) or lost; return the signed charge.dispute.closed request."""
        with self._lock:
            dispute = self._disputes.get(dispute_id)
            if dispute is None:
                raise GatewayNotFound(f"no dispute {dispute_id}")
            dispute.status = "won" if won else "lost"
            return self.signed(self._emit("charge.dispute.closed", self._dispute_object(dispute)))

    def event_for_payment_intent(
        self, payment_intent_id: str, event_type: str = "payment_intent.succeeded"
    ) -> SignedWebhook:
        """A signed event about an intent in its current state (for replays, reordering and duplicates in tests)."""
        with self._lock:
            return self.signed(self._emit(event_type, self._pi_object(self._intent(payment_intent_id))))

    def signed(
        self, event: Mapping[str, Any], *, timestamp: int | None = None, secret: str | None = None
    ) -> SignedWebhook:
        """Serialise and sign an event body with the webhook secret, exactly as the gateway would deliver it."""
        payload = signing.encode_event(event)
        header = signing.sign(payload, self.webhook_secret if secret is None else secret, timestamp)
        return SignedWebhook(payload=payload, signature_header=header, event=copy.deepcopy(dict(event)))

    # -- introspection for tests ---------------------------------------------------------------------------------

    def succeeded_amount(self, customer_id: str) -> int:
        """Minor units successfully charged to a customer, net of refunds."""
        with self._lock:
            return sum(
                pi.amount - pi.refunded
                for pi in self._intents.values()
                if pi.customer == customer_id and pi.status == "succeeded"
            )

    def charge_count(self) -> int:
        """How many payment intents succeeded in all."""
        with self._lock:
            return sum(1 for pi in self._intents.values() if pi.status == "succeeded")

    # -- internals -----------------------------------------------------------------------------------------------

    def _idempotent(self, operation: str, key: str, params: Mapping[str, Any], run: Callable[[], T]) -> T:
        """Run a mutating call once per idempotency key, as Stripe does: a replay gets the first outcome."""
        check_idempotency_key(key)
        fingerprint = (operation, repr(sorted(params.items())))
        with self._lock:
            self.calls.append(FakeCall(operation, key, dict(params)))
            record = self._idempotency.get(key)
            if record is not None:
                if record.fingerprint != fingerprint:
                    raise IdempotencyConflict(f"idempotency key {key!r} was used for another request")
                if record.error is not None:
                    raise copy.copy(record.error)
                return copy.copy(record.result)  # type: ignore[no-any-return]
            fault = self._take_fault(operation, ("timeout", "unavailable"))
            if fault and fault.kind == "unavailable":
                raise GatewayUnavailable()
            if fault and not fault.data.get("happened", True):
                raise GatewayTimeout()
            try:
                result = run()
            except (CardDeclined, AuthenticationRequired) as exc:
                # Stripe stores the outcome of a request that reached the bank, errors included; it does not
                # store validation failures (unknown ids, bad amounts), which may be retried after a fix.
                self._idempotency[key] = _Record(fingerprint, error=exc)
                raise
            self._idempotency[key] = _Record(fingerprint, result=result)
            if fault:
                raise GatewayTimeout()
            return result

    def _new_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}_fake_{n:06d}"

    @staticmethod
    def _now() -> int:
        return int(clock.now().timestamp())

    @staticmethod
    def _secret(object_id: str) -> str:
        return f"{object_id}_secret_fake"

    def _customer(self, customer_id: str) -> Customer:
        customer = self._customers.get(customer_id)
        if customer is None:
            raise GatewayNotFound(f"no customer {customer_id}")
        return customer

    def _card(self, payment_method_id: str) -> _Card:
        card = self._cards.get(payment_method_id)
        if card is None:
            raise GatewayNotFound(f"no payment method {payment_method_id}")
        return card

    def _setup_intent(self, setup_intent_id: str) -> _SetupIntent:
        si = self._setup_intents.get(setup_intent_id)
        if si is None:
            raise GatewayNotFound(f"no setup intent {setup_intent_id}")
        return si

    def _intent(self, payment_intent_id: str) -> _PaymentIntent:
        pi = self._intents.get(payment_intent_id)
        if pi is None:
            raise GatewayNotFound(f"no payment intent {payment_intent_id}")
        return pi

    def _setup_succeeded(self, si: _SetupIntent) -> None:
        si.status = "succeeded"
        self._emit("setup_intent.succeeded", self._si_object(si))

    def _succeed(self, pi: _PaymentIntent) -> None:
        pi.status = "succeeded"
        pi.latest_charge = self._new_id("ch")
        pi.decline_code = pi.error_code = pi.error_message = None
        self._emit("payment_intent.succeeded", self._pi_object(pi))

    def _fail(self, pi: _PaymentIntent, decline_code: str) -> None:
        pi.status = "requires_payment_method"
        pi.latest_charge = self._new_id("ch")
        pi.decline_code, pi.error_code, pi.error_message = decline_code, "card_declined", "Your card was declined."
        self._emit("payment_intent.payment_failed", self._pi_object(pi))

    def _emit(self, event_type: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        event = {
            "id": self._new_id("evt"),
            "object": "event",
            "type": event_type,
            "created": self._now(),
            "livemode": False,
            "api_version": "fake",
            "data": {"object": copy.deepcopy(dict(obj))},
        }
        self.events.append(event)
        return event

    def _si_result(self, si: _SetupIntent) -> SetupIntentResult:
        return SetupIntentResult(
            id=si.id,
            client_secret=self._secret(si.id),
            status=si.status,
            payment_method=si.payment_method,
            customer=si.customer,
        )

    @staticmethod
    def _pm_info(card: _Card) -> PaymentMethodInfo:
        return PaymentMethodInfo(card.id, card.brand, card.last4, card.exp_month, card.exp_year, card.customer)

    def _pi_result(self, pi: _PaymentIntent) -> PaymentIntentResult:
        return PaymentIntentResult(
            id=pi.id,
            status=pi.status,
            amount_minor=pi.amount,
            currency=pi.currency,
            client_secret=self._secret(pi.id),
            payment_method=pi.payment_method,
            customer=pi.customer,
            latest_charge=pi.latest_charge,
            metadata=dict(pi.metadata),
            decline_code=pi.decline_code,
            error_code=pi.error_code,
            error_message=pi.error_message,
            created=pi.created,
        )

    # Event objects in Stripe's shapes (the fields our webhook handler reads).

    def _pi_object(self, pi: _PaymentIntent) -> dict[str, Any]:
        error = None
        if pi.error_code:
            error = {"code": pi.error_code, "decline_code": pi.decline_code, "message": pi.error_message}
        return {
            "id": pi.id,
            "object": "payment_intent",
            "amount": pi.amount,
            "amount_received": pi.amount if pi.status == "succeeded" else 0,
            "currency": pi.currency.lower(),
            "customer": pi.customer,
            "payment_method": pi.payment_method,
            "status": pi.status,
            "latest_charge": pi.latest_charge,
            "metadata": dict(pi.metadata),
            "last_payment_error": error,
            "created": pi.created,
            "livemode": False,
        }

    def _charge_object(self, pi: _PaymentIntent) -> dict[str, Any]:
        return {
            "id": pi.latest_charge,
            "object": "charge",
            "amount": pi.amount,
            "amount_refunded": pi.refunded,
            "refunded": pi.refunded >= pi.amount,
            "currency": pi.currency.lower(),
            "customer": pi.customer,
            "payment_intent": pi.id,
            "metadata": dict(pi.metadata),
            "status": "succeeded",
            "livemode": False,
        }

    @staticmethod
    def _refund_object(refund: RefundResult) -> dict[str, Any]:
        return {
            "id": refund.id,
            "object": "refund",
            "amount": refund.amount_minor,
            "currency": refund.currency.lower(),
            "payment_intent": refund.payment_intent,
            "status": refund.status,
            "metadata": dict(refund.metadata),
        }

    def _dispute_object(self, dispute: _Dispute) -> dict[str, Any]:
        pi = self._intents[dispute.payment_intent]
        return {
            "id": dispute.id,
            "object": "dispute",
            "amount": dispute.amount,
            "currency": dispute.currency.lower(),
            "charge": dispute.charge,
            "payment_intent": dispute.payment_intent,
            "reason": dispute.reason,
            "status": dispute.status,
            "created": dispute.created,
            "metadata": dict(pi.metadata),
            "livemode": False,
        }

    @staticmethod
    def _si_object(si: _SetupIntent) -> dict[str, Any]:
        return {
            "id": si.id,
            "object": "setup_intent",
            "customer": si.customer,
            "payment_method": si.payment_method,
            "status": si.status,
            "usage": "off_session",
            "metadata": dict(si.metadata),
        }

    @staticmethod
    def _pm_object(card: _Card) -> dict[str, Any]:
        return {
            "id": card.id,
            "object": "payment_method",
            "type": "card",
            "customer": card.customer,
            "card": {"brand": card.brand, "last4": card.last4, "exp_month": card.exp_month, "exp_year": card.exp_year},
        }


def _brand(digits: str) -> str:
    if digits.startswith("4"):
        return "visa"
    if digits[:2] in ("34", "37"):
        return "amex"
    if 51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720:
        return "mastercard"
    return "unknown"
