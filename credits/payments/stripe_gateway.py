"""StripeGateway: the payment gateway port on the official `stripe` library, for Stripe and for localstripe.

Only parameters that both Stripe and localstripe accept are sent (localstripe answers 400 to unknown ones such
as `description`, `automatic_payment_methods`, `setup_future_usage`); free text goes in metadata. Where the
two servers answer differently the adapter reduces both to one result (see each method).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

import stripe

from credits import money
from credits.config import Config
from credits.errors import ConfigError, IdempotencyConflict
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
    PaymentMethodInfo,
    RefundResult,
    SetupIntentResult,
    WebhookEvent,
    check_amount_minor,
    check_idempotency_key,
    check_list_args,
    check_metadata,
    check_refund_amount,
)

#: The Stripe API version every request names. stripe-python 16.x is generated for exactly this version
#: (`stripe.api_version`); a test fails when the installed library pins another, so upgrades are deliberate.
STRIPE_API_VERSION = "2026-10-28.endive"
STRIPE_API_BASE = "https://api.stripe.com"
#: Seconds to open a connection (nothing was sent if it fails) and to wait for an answer (outcome unknown).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
_CARD_ONLY = ["card"]
_LIST_PAGE = 100
_MAX_LIST_PAGES = 50


class StripeGateway:
    """PaymentGateway on `stripe.StripeClient`, without automatic retries: callers retry with their own key."""

    def __init__(
        self,
        secret_key: str,
        *,
        webhook_secret: str = "",
        api_base: str | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        webhook_tolerance_s: int = DEFAULT_WEBHOOK_TOLERANCE_S,
    ) -> None:
        if not secret_key:
            raise ConfigError("CREDITS_STRIPE_SECRET_KEY is not set")
        base = (api_base or STRIPE_API_BASE).rstrip("/")
        if base != STRIPE_API_BASE and "_live_" in secret_key:
            # A live key sent to a stand-in server would be disclosed to whoever runs it.
            raise ConfigError("a live Stripe key may only be sent to api.stripe.com")
        self.api_base = base
        self._webhook_secret = webhook_secret
        self._webhook_tolerance_s = webhook_tolerance_s
        self._client = stripe.StripeClient(
            secret_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=(connect_timeout_s, read_timeout_s)),
        )

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> StripeGateway:
        """Build it from CREDITS_STRIPE_SECRET_KEY, _WEBHOOK_SECRET and _API_BASE (empty: api.stripe.com)."""
        return cls(
            cfg.stripe_secret_key,
            webhook_secret=cfg.stripe_webhook_secret,
            api_base=cfg.stripe_api_base or None,
            **kwargs,
        )

    # -- customers and cards ---------------------------------------------------------------------------------------

    def create_customer(
        self, *, email: str | None = None, metadata: Mapping[str, str] | None = None, idempotency_key: str
    ) -> Customer:
        params: dict[str, Any] = {"metadata": check_metadata(metadata)}
        if email:
            params["email"] = email
        with _mapped():
            obj = _data(self._client.v1.customers.create(cast(Any, params), _opts(idempotency_key)))
        return Customer(id=obj["id"], email=obj.get("email"), metadata=_str_map(obj.get("metadata")))

    def create_setup_intent(
        self, customer_id: str, *, metadata: Mapping[str, str] | None = None, idempotency_key: str
    ) -> SetupIntentResult:
        # usage=off_session: the card is saved for auto-recharge too. payment_method_types=card: with automatic
        # payment methods Stripe would also offer redirect-based methods that this flow cannot handle.
        params: dict[str, Any] = {
            "customer": customer_id,
            "usage": "off_session",
            "payment_method_types": _CARD_ONLY,
            "metadata": check_metadata(metadata),
        }
        with _mapped():
            obj = self._client.v1.setup_intents.create(cast(Any, params), _opts(idempotency_key))
        return _setup_intent(_data(obj))

    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentResult:
        with _mapped():
            obj = self._client.v1.setup_intents.retrieve(setup_intent_id)
        return _setup_intent(_data(obj))

    def attach_payment_method(
        self, payment_method_id: str, customer_id: str, *, idempotency_key: str
    ) -> PaymentMethodInfo:
        with _mapped():
            obj = self._client.v1.payment_methods.attach(
                payment_method_id, {"customer": customer_id}, _opts(idempotency_key)
            )
        return _payment_method(_data(obj))

    def list_payment_methods(self, customer_id: str) -> list[PaymentMethodInfo]:
        # Not GET /v1/customers/{id}/payment_methods: localstripe answers 404 there.
        with _mapped():
            page = self._client.v1.payment_methods.list({"customer": customer_id, "type": "card", "limit": 100})
        return [_payment_method(_data(pm)) for pm in page.data]

    def detach_payment_method(self, payment_method_id: str, *, idempotency_key: str) -> None:
        with _mapped():
            self._client.v1.payment_methods.detach(payment_method_id, options=_opts(idempotency_key))

    # -- payments ------------------------------------------------------------------------------------------------

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
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "customer": customer_id,
            # Named at creation: localstripe answers 500 to confirm(payment_method=...) on an existing intent.
            "payment_method": payment_method_id,
            "payment_method_types": _CARD_ONLY,
            "confirm": True,
            "metadata": check_metadata(metadata),
        }
        if off_session:
            params["off_session"] = True
        # Stripe answers authentication_required (raised as AuthenticationRequired) only off-session.
        try:
            with _mapped():
                obj = self._client.v1.payment_intents.create(cast(Any, params), _opts(idempotency_key))
        except CardDeclined as exc:
            if exc.payment_intent_id is None and exc.charge_id:
                # localstripe's decline names only the charge; Stripe's names the intent too.
                exc.payment_intent_id = self._intent_of_charge(exc.charge_id)
                exc.extra["payment_intent_id"] = exc.payment_intent_id
            raise
        result = _payment_intent(_data(obj))
        if result.status == "requires_action" and off_session:
            # localstripe leaves an off-session 3-D Secure intent in requires_action where Stripe raises
            # authentication_required: both mean "bring the customer back on-session".
            raise AuthenticationRequired(
                payment_intent_id=result.id,
                client_secret=result.client_secret,
                payment_method_id=result.payment_method,
            )
        if result.status == "requires_payment_method":
            raise CardDeclined(
                payment_intent_id=result.id, decline_code=result.decline_code, error_code=result.error_code
            )
        return result

    def _intent_of_charge(self, charge_id: str) -> str | None:
        try:
            with _mapped():
                charge = _data(self._client.v1.charges.retrieve(charge_id))
        except GatewayError:
            return None  # the decline stands; only the id is missing
        return _id_of(charge.get("payment_intent"))

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        with _mapped():
            obj = self._client.v1.payment_intents.retrieve(payment_intent_id)
        return _payment_intent(_data(obj))

    def list_payment_intents(self, *, created_after: datetime, limit: int = 100) -> list[PaymentIntentResult]:
        since = check_list_args(created_after, limit)
        try:
            return self._list_intents({"created": {"gte": since}}, since, limit)
        except GatewayError as exc:
            # localstripe lists intents without filters and answers 400 ("Unexpected created"): filter here.
            if type(exc) is not GatewayError or exc.extra.get("http_status") != 400:
                raise
            return self._list_intents({}, since, limit)

    def _list_intents(self, filters: dict[str, Any], since: int, limit: int) -> list[PaymentIntentResult]:
        found: list[PaymentIntentResult] = []
        starting_after: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            params: dict[str, Any] = {**filters, "limit": _LIST_PAGE}
            if starting_after:
                params["starting_after"] = starting_after
            with _mapped():
                page = self._client.v1.payment_intents.list(cast(Any, params))
            items = [_payment_intent(_data(obj)) for obj in page.data]
            found += [item for item in items if (item.created or 0) >= since]
            # Stripe filters and sorts newest first, so `limit` matches end the walk; unfiltered, walk it all.
            if not page.has_more or not items or (filters and len(found) >= limit):
                break
            starting_after = items[-1].id
        found.sort(key=lambda r: (r.created or 0, r.id), reverse=True)
        return found[:limit]

    def refund(
        self,
        payment_intent_id: str,
        *,
        amount_minor: int,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str,
    ) -> RefundResult:
        check_refund_amount(amount_minor)
        params: dict[str, Any] = {
            "payment_intent": payment_intent_id,
            "amount": amount_minor,
            "metadata": check_metadata(metadata),
        }
        try:
            with _mapped():
                obj = _data(self._client.v1.refunds.create(cast(Any, params), _opts(idempotency_key)))
        except (CardDeclined, AuthenticationRequired) as exc:
            raise RefundFailed(exc.message, reason=exc.code, payment_intent_id=payment_intent_id) from exc
        except GatewayError as exc:
            if type(exc) is GatewayError:  # refused by the gateway; not "unavailable", "timeout" or "not found"
                raise RefundFailed(
                    exc.message, reason=exc.extra.get("gateway_code") or "refused", payment_intent_id=payment_intent_id
                ) from exc
            raise
        pi = obj.get("payment_intent")
        return RefundResult(
            id=obj["id"],
            status=obj.get("status") or "succeeded",
            amount_minor=int(obj["amount"]),
            currency=str(obj.get("currency") or "").upper(),
            payment_intent=pi if isinstance(pi, str) else (pi.get("id") if pi else payment_intent_id),
            metadata=_str_map(obj.get("metadata")),
        )

    # -- webhooks ------------------------------------------------------------------------------------------------

    def construct_webhook_event(self, raw_body: bytes, signature_header: str | None) -> WebhookEvent:
        return signing.construct_event(
            raw_body, signature_header, self._webhook_secret, tolerance_s=self._webhook_tolerance_s
        )


# -- conversions ---------------------------------------------------------------------------------------------------


def _opts(idempotency_key: str) -> Any:
    return {"idempotency_key": check_idempotency_key(idempotency_key)}


def _data(obj: Any) -> dict[str, Any]:
    """A response as plain data (a StripeObject is not a dict), nested objects included."""
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return dict(obj or {})


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(value or {}).items()}


def _id_of(value: Any) -> str | None:
    """An expandable field as an id: Stripe sends "ch_..." where localstripe sends the whole object."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return str(inner) if inner else None
    return str(getattr(value, "id", "")) or None


def _setup_intent(obj: Mapping[str, Any]) -> SetupIntentResult:
    return SetupIntentResult(
        id=obj["id"],
        client_secret=obj.get("client_secret") or "",
        status=obj["status"],
        payment_method=_id_of(obj.get("payment_method")),
        customer=_id_of(obj.get("customer")),
    )


def _payment_method(obj: Mapping[str, Any]) -> PaymentMethodInfo:
    card = obj.get("card") or {}
    return PaymentMethodInfo(
        id=obj["id"],
        brand=str(card.get("brand") or "unknown"),
        last4=str(card.get("last4") or ""),
        exp_month=int(card.get("exp_month") or 0),
        exp_year=int(card.get("exp_year") or 0),
        customer=_id_of(obj.get("customer")),
    )


def _payment_intent(obj: Mapping[str, Any]) -> PaymentIntentResult:
    error = obj.get("last_payment_error") or {}
    return PaymentIntentResult(
        id=obj["id"],
        status=obj["status"],
        amount_minor=int(obj["amount"]),
        currency=str(obj.get("currency") or "").upper(),
        client_secret=obj.get("client_secret"),
        payment_method=_id_of(obj.get("payment_method")),
        customer=_id_of(obj.get("customer")),
        latest_charge=_id_of(obj.get("latest_charge")),
        metadata=_str_map(obj.get("metadata")),
        decline_code=error.get("decline_code"),
        error_code=error.get("code"),
        error_message=error.get("message"),
        created=int(obj["created"]) if isinstance(obj.get("created"), int) else None,
    )


# -- error mapping -------------------------------------------------------------------------------------------------


@contextmanager
def _mapped() -> Iterator[None]:
    """Translate stripe-python exceptions raised inside the block into the port's errors."""
    try:
        yield
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def _translate(exc: stripe.StripeError) -> Exception:  # noqa: C901 - one flat table of cases
    err = _data(exc.error)
    pi = err.get("payment_intent")
    pi_id = _id_of(pi)
    base: dict[str, Any] = {"gateway_code": exc.code, "http_status": exc.http_status, "request_id": exc.request_id}
    if isinstance(exc, stripe.CardError):
        if exc.code == "authentication_required":
            return AuthenticationRequired(
                payment_intent_id=pi_id,
                client_secret=pi.get("client_secret") if isinstance(pi, Mapping) else None,
                payment_method_id=_id_of(err.get("payment_method"))
                or (_id_of(pi.get("payment_method")) if isinstance(pi, Mapping) else None),
                **base,
            )
        return CardDeclined(
            payment_intent_id=pi_id,
            decline_code=err.get("decline_code"),
            charge_id=_id_of(err.get("charge")),
            error_code=exc.code,
            **base,
        )
    if isinstance(exc, stripe.IdempotencyError):
        return IdempotencyConflict("the idempotency key was used before with other parameters", **base)
    if isinstance(exc, stripe.InvalidRequestError) and (exc.http_status == 404 or exc.code == "resource_missing"):
        return GatewayNotFound(str(exc.user_message or "not found"), **base)
    if isinstance(exc, stripe.APIConnectionError):
        if _never_sent(exc):
            return GatewayUnavailable(**base)
        return GatewayTimeout(**base)
    if isinstance(exc, stripe.RateLimitError):
        return GatewayUnavailable(**base)  # refused before processing
    if isinstance(exc, stripe.APIError) or (exc.http_status or 0) >= 500:
        # Stripe: "treat the result of a 500 request as indeterminate" - same handling as a timeout.
        return GatewayTimeout(**base)
    return GatewayError(f"gateway error {exc.http_status}: {exc.user_message or exc}", **base)


def _never_sent(exc: stripe.APIConnectionError) -> bool:
    """True when the connection could not be opened, so the request cannot have reached the gateway."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError

    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(cause, requests.exceptions.ConnectionError) and not isinstance(cause, requests.exceptions.Timeout):
        reason = getattr(cause.args[0], "reason", None) if cause.args else None
        # NewConnectionError (refused, no route, DNS) is a ConnectTimeoutError in urllib3 2.
        return isinstance(reason, ConnectTimeoutError)
    return False
