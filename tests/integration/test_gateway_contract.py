"""The PaymentGateway contract, run against FakeGateway and against StripeGateway on a real localstripe.

Sections:
- CONTRACT: parametrised over both adapters; what the service may rely on from either.
- FAKE ONLY: what localstripe cannot do (idempotency keys, over-refund refusal, disputes, fault knobs).
  Each such gap has a LOCALSTRIPE GAP test below that pins localstripe's actual behaviour, so a gap that
  closes (or widens) shows up as a failure instead of hiding behind a skip.
- STRIPE ADAPTER: the adapter's own duties (API version, headers, timeouts, error mapping, real webhooks).

No database: the `app` fixture is not used. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

import pytest
import stripe

from credits import clock
from credits.config import Config
from credits.errors import ConfigError, IdempotencyConflict, ValidationError
from credits.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    GatewayNotFound,
    GatewayTimeout,
    GatewayUnavailable,
    InvalidWebhookPayload,
    RefundFailed,
    SignatureExpired,
    SignatureMismatch,
    SignatureMissing,
)
from credits.payments.fake_gateway import FakeGateway
from credits.payments.gateway import PaymentGateway, PaymentIntentResult, SetupIntentResult
from credits.payments.localstripe_server import TEST_SECRET_KEY, LocalStripe
from credits.payments.stripe_gateway import STRIPE_API_VERSION, StripeGateway

WEBHOOK_SECRET = "whsec_contract_tests"  # noqa: S105 - a test secret
VISA = "4242424242424242"
DECLINED_AT_CHARGE = "4000000000000341"
DECLINED_AT_SETUP = "4000000000000002"
THREE_D_SECURE = "4000002500003155"


# -- drivers: the browser's part (Stripe.js) and the tests' view of what was charged --------------------------------


class Driver(Protocol):
    @property
    def gateway(self) -> PaymentGateway:
        """The adapter under test (read-only here, so mypy checks that both adapters satisfy the port)."""
        ...

    def card(self, number: str) -> str:
        """A payment method for a test card, as Stripe.js tokenises it."""
        ...

    def confirm_setup(self, setup_intent_id: str, payment_method_id: str) -> SetupIntentResult:
        """Confirm a SetupIntent with a card, as `stripe.confirmCardSetup` does."""
        ...

    def authenticate(self, intent: PaymentIntentResult) -> None:
        """Pass the 3-D Secure challenge of an intent in requires_action, as `confirmCardPayment` does."""
        ...

    def charged_minor(self, customer_id: str) -> int:
        """Minor units actually charged to the customer, net of refunds."""
        ...


@dataclass
class FakeDriver:
    gateway: FakeGateway

    def card(self, number: str) -> str:
        return self.gateway.create_card_payment_method(number, 12, 2030)

    def confirm_setup(self, setup_intent_id: str, payment_method_id: str) -> SetupIntentResult:
        return self.gateway.confirm_setup_intent(setup_intent_id, payment_method_id)

    def authenticate(self, intent: PaymentIntentResult) -> None:
        self.gateway.authenticate_payment_intent(intent.id)

    def charged_minor(self, customer_id: str) -> int:
        return self.gateway.succeeded_amount(customer_id)


@dataclass
class LocalStripeDriver:
    gateway: StripeGateway
    server: LocalStripe
    raw: stripe.StripeClient = field(init=False)

    def __post_init__(self) -> None:
        self.raw = stripe.StripeClient(
            TEST_SECRET_KEY, base_addresses={"api": self.server.base_url}, max_network_retries=0
        )

    def card(self, number: str) -> str:
        # Raw card numbers reach localstripe only: on Stripe, Stripe.js does this in the browser.
        card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        return self.raw.v1.payment_methods.create(cast(Any, {"type": "card", "card": card})).id

    def confirm_setup(self, setup_intent_id: str, payment_method_id: str) -> SetupIntentResult:
        try:
            self.raw.v1.setup_intents.confirm(setup_intent_id, {"payment_method": payment_method_id})
        except stripe.CardError as exc:
            raise CardDeclined(decline_code=exc.code) from exc
        return self.gateway.retrieve_setup_intent(setup_intent_id)

    def authenticate(self, intent: PaymentIntentResult) -> None:
        assert intent.client_secret
        self.server.authenticate_payment_intent(intent.id, intent.client_secret, success=True)

    def charged_minor(self, customer_id: str) -> int:
        charges = self.raw.v1.charges.list({"customer": customer_id, "limit": 100}).data
        return sum(c.amount - c.amount_refunded for c in charges if c.status == "succeeded")


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    with LocalStripe(start_timeout_s=20) as server:
        yield server


def _stripe_gateway(server: LocalStripe, **kwargs: Any) -> StripeGateway:
    cfg = Config(
        env="test",
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=server.base_url,
    )
    return StripeGateway.from_config(cfg, **kwargs)


@pytest.fixture(params=["fake", "localstripe"])
def driver(request: pytest.FixtureRequest) -> Driver:
    if request.param == "fake":
        return FakeDriver(FakeGateway(webhook_secret=WEBHOOK_SECRET))
    server: LocalStripe = request.getfixturevalue("localstripe")
    server.reset()
    return LocalStripeDriver(_stripe_gateway(server), server)


@pytest.fixture
def ls_driver(localstripe: LocalStripe) -> LocalStripeDriver:
    localstripe.reset()
    return LocalStripeDriver(_stripe_gateway(localstripe), localstripe)


class Keys:
    """Fresh idempotency keys, as the services derive them from their own row ids."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, label: str = "op") -> str:
        self.n += 1
        return f"test:{label}:{self.n}"


@pytest.fixture
def key() -> Keys:
    return Keys()


def _customer_with_card(driver: Driver, key: Keys, number: str = VISA) -> tuple[str, str]:
    gw = driver.gateway
    customer = gw.create_customer(email="ada@example.test", metadata={"wallet_id": "1"}, idempotency_key=key("cus"))
    pm = driver.card(number)
    gw.attach_payment_method(pm, customer.id, idempotency_key=key("attach"))
    return customer.id, pm


def _pay(driver: Driver, key: Keys, customer_id: str, pm: str, amount: int = 1000, **kw: Any) -> PaymentIntentResult:
    return driver.gateway.create_payment_intent(
        amount_minor=amount,
        currency="USD",
        customer_id=customer_id,
        payment_method_id=pm,
        metadata={"purchase_id": "42", "note": "Top-up 10.00 USD"},
        idempotency_key=key("pi"),
        **kw,
    )


def _sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The tests' own Stripe-Signature, written from Stripe's documentation rather than the code under test."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _now() -> int:
    return int(clock.now().timestamp())


EVENT = json.dumps(
    {
        "id": "evt_contract_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 1_700_000_000,
        "livemode": False,
        "data": {"object": {"id": "pi_123", "object": "payment_intent", "amount": 1000, "metadata": {"p": "1"}}},
    }
).encode()


# == CONTRACT ====================================================================================================


def test_port_is_implemented(driver: Driver) -> None:
    assert isinstance(driver.gateway, PaymentGateway)


def test_create_customer(driver: Driver, key: Keys) -> None:
    customer = driver.gateway.create_customer(
        email="ada@example.test", metadata={"wallet_id": "7"}, idempotency_key=key()
    )
    assert customer.id.startswith("cus_")
    assert customer.email == "ada@example.test"
    assert dict(customer.metadata) == {"wallet_id": "7"}


def test_setup_intent_confirm_attach_list_detach(driver: Driver, key: Keys) -> None:
    gw = driver.gateway
    customer = gw.create_customer(email=None, idempotency_key=key())
    si = gw.create_setup_intent(customer.id, metadata={"wallet_id": "7"}, idempotency_key=key())
    assert si.id.startswith("seti_") and si.client_secret and si.status == "requires_payment_method"
    assert si.customer == customer.id

    pm = driver.card(VISA)
    confirmed = driver.confirm_setup(si.id, pm)
    assert confirmed.status == "succeeded" and confirmed.payment_method == pm
    assert gw.retrieve_setup_intent(si.id).payment_method == pm
    # The SetupIntent does not attach the card (localstripe): the service attaches it explicitly.
    info = gw.attach_payment_method(pm, customer.id, idempotency_key=key())
    assert (info.id, info.brand, info.last4, info.exp_month, info.exp_year) == (pm, "visa", "4242", 12, 2030)

    listed = gw.list_payment_methods(customer.id)
    assert [(m.id, m.brand, m.last4, m.exp_month, m.exp_year) for m in listed] == [(pm, "visa", "4242", 12, 2030)]

    gw.detach_payment_method(pm, idempotency_key=key())
    assert gw.list_payment_methods(customer.id) == []


def test_card_declined_at_setup(driver: Driver, key: Keys) -> None:
    customer = driver.gateway.create_customer(idempotency_key=key())
    si = driver.gateway.create_setup_intent(customer.id, idempotency_key=key())
    with pytest.raises(CardDeclined):
        driver.confirm_setup(si.id, driver.card(DECLINED_AT_SETUP))
    assert driver.gateway.retrieve_setup_intent(si.id).status == "canceled"


def test_payment_succeeds(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key)
    result = _pay(driver, key, customer_id, pm, amount=1000)
    assert result.status == "succeeded" and result.succeeded
    assert (result.amount_minor, result.currency, result.customer, result.payment_method) == (
        1000,
        "USD",
        customer_id,
        pm,
    )
    assert result.latest_charge and result.latest_charge.startswith("ch_")
    assert dict(result.metadata) == {"purchase_id": "42", "note": "Top-up 10.00 USD"}
    assert driver.gateway.retrieve_payment_intent(result.id) == result
    assert driver.charged_minor(customer_id) == 1000


def test_off_session_payment_on_saved_card_succeeds(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key)
    assert _pay(driver, key, customer_id, pm, amount=2000, off_session=True).succeeded
    assert driver.charged_minor(customer_id) == 2000


def test_payment_declined_charges_nothing(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key, DECLINED_AT_CHARGE)
    with pytest.raises(CardDeclined) as caught:
        _pay(driver, key, customer_id, pm)
    assert caught.value.status == 402 and caught.value.safe
    assert caught.value.payment_intent_id
    assert "decline" in caught.value.message.lower()
    after = driver.gateway.retrieve_payment_intent(caught.value.payment_intent_id)
    assert after.status == "requires_payment_method" and after.error_code == "card_declined"
    assert driver.charged_minor(customer_id) == 0


def test_three_d_secure_on_session_requires_action_then_succeeds(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key, THREE_D_SECURE)
    result = _pay(driver, key, customer_id, pm, amount=1500)
    assert result.status == "requires_action" and result.client_secret
    assert driver.charged_minor(customer_id) == 0
    driver.authenticate(result)
    settled = driver.gateway.retrieve_payment_intent(result.id)
    assert settled.status == "succeeded" and settled.latest_charge
    assert driver.charged_minor(customer_id) == 1500


def test_three_d_secure_off_session_raises_authentication_required(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key, THREE_D_SECURE)
    with pytest.raises(AuthenticationRequired) as caught:
        _pay(driver, key, customer_id, pm, off_session=True)
    err = caught.value
    assert err.payment_intent_id and err.client_secret and err.payment_method_id == pm
    assert driver.charged_minor(customer_id) == 0
    # The customer comes back on-session and completes the same intent.
    driver.authenticate(driver.gateway.retrieve_payment_intent(err.payment_intent_id))
    assert driver.gateway.retrieve_payment_intent(err.payment_intent_id).succeeded


def test_refund_partial_then_rest(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key)
    paid = _pay(driver, key, customer_id, pm, amount=1000)
    partial = driver.gateway.refund(paid.id, amount_minor=300, metadata={"refund_id": "9"}, idempotency_key=key())
    assert (partial.status, partial.amount_minor, partial.currency, partial.payment_intent) == (
        "succeeded", 300, "USD", paid.id,
    )  # fmt: skip
    assert partial.id.startswith("re_")
    assert driver.charged_minor(customer_id) == 700
    rest = driver.gateway.refund(paid.id, amount_minor=700, idempotency_key=key())
    assert (rest.status, rest.amount_minor) == ("succeeded", 700)
    assert driver.charged_minor(customer_id) == 0


def test_refund_full(driver: Driver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(driver, key)
    paid = _pay(driver, key, customer_id, pm, amount=2500)
    assert driver.gateway.refund(paid.id, amount_minor=2500, idempotency_key=key()).amount_minor == 2500
    assert driver.charged_minor(customer_id) == 0


def test_list_payment_intents_since_a_time_newest_first(driver: Driver, key: Keys) -> None:
    """Reconciliation lists recent intents (any status) and finds a purchase's intent by its metadata."""
    gw = driver.gateway
    since = datetime.fromtimestamp(_now() - 1, UTC)
    customer_id, pm = _customer_with_card(driver, key)
    paid = _pay(driver, key, customer_id, pm, amount=1000)
    declined_customer, declined_pm = _customer_with_card(driver, key, DECLINED_AT_CHARGE)
    with pytest.raises(CardDeclined) as declined:
        _pay(driver, key, declined_customer, declined_pm)
    waiting_customer, waiting_pm = _customer_with_card(driver, key, THREE_D_SECURE)
    waiting = _pay(driver, key, waiting_customer, waiting_pm)

    listed = gw.list_payment_intents(created_after=since)
    by_id = {pi.id: pi for pi in listed}
    assert set(by_id) == {paid.id, declined.value.payment_intent_id, waiting.id}
    assert by_id[paid.id].status == "succeeded" and by_id[paid.id].amount_minor == 1000
    assert dict(by_id[paid.id].metadata)["purchase_id"] == "42"
    assert by_id[waiting.id].status == "requires_action"
    assert by_id[declined.value.payment_intent_id].status == "requires_payment_method"
    created = [pi.created for pi in listed]
    assert all(isinstance(c, int) and c >= int(since.timestamp()) for c in created)
    assert created == sorted(created, reverse=True)  # type: ignore[type-var]
    assert len(gw.list_payment_intents(created_after=since, limit=2)) == 2
    assert gw.list_payment_intents(created_after=datetime.fromtimestamp(_now() + 120, UTC)) == []
    with pytest.raises(ValidationError):
        gw.list_payment_intents(created_after=since, limit=0)


def test_unknown_objects_are_not_found(driver: Driver, key: Keys) -> None:
    customer = driver.gateway.create_customer(idempotency_key=key())
    with pytest.raises(GatewayNotFound):
        driver.gateway.retrieve_payment_intent("pi_doesnotexist")
    with pytest.raises(GatewayNotFound):
        driver.gateway.attach_payment_method("pm_doesnotexist", customer.id, idempotency_key=key())
    with pytest.raises(GatewayNotFound):
        driver.gateway.list_payment_methods("cus_doesnotexist")


def test_webhook_signed_with_the_secret_verifies(driver: Driver) -> None:
    event = driver.gateway.construct_webhook_event(EVENT, _sign(EVENT, WEBHOOK_SECRET, _now()))
    assert (event.id, event.type, event.created) == ("evt_contract_1", "payment_intent.succeeded", 1_700_000_000)
    assert event.data_object["id"] == "pi_123"


def test_webhook_with_a_rolled_secret_verifies_if_any_signature_matches(driver: Driver) -> None:
    ts = _now()
    old = _sign(EVENT, "whsec_old", ts).split(",")[1]
    header = f"t={ts},{old},{_sign(EVENT, WEBHOOK_SECRET, ts).split(',')[1]}"
    assert driver.gateway.construct_webhook_event(EVENT, header).id == "evt_contract_1"


@pytest.mark.parametrize(
    "case",
    ["wrong secret", "altered body", "signature of another timestamp"],
)
def test_webhook_forged_signature_fails(driver: Driver, case: str) -> None:
    ts = _now()
    body, header = EVENT, _sign(EVENT, WEBHOOK_SECRET, ts)
    if case == "wrong secret":
        header = _sign(EVENT, "whsec_attacker", ts)
    elif case == "altered body":
        body = EVENT.replace(b'"amount": 1000', b'"amount": 9000')
        assert body != EVENT
    else:
        header = f"t={ts + 1},{header.split(',')[1]}"
    with pytest.raises(SignatureMismatch) as caught:
        driver.gateway.construct_webhook_event(body, header)
    assert caught.value.status == 400


@pytest.mark.parametrize("header", [None, "", "t=123", f"v1={'0' * 64}", "garbage"])
def test_webhook_missing_signature_fails(driver: Driver, header: str | None) -> None:
    with pytest.raises(SignatureMissing) as caught:
        driver.gateway.construct_webhook_event(EVENT, header)
    assert caught.value.status == 400


def test_webhook_body_must_be_raw_bytes_of_an_event(driver: Driver) -> None:
    body = b"not json"
    with pytest.raises(InvalidWebhookPayload):
        driver.gateway.construct_webhook_event(body, _sign(body, WEBHOOK_SECRET, _now()))
    with pytest.raises(InvalidWebhookPayload):
        driver.gateway.construct_webhook_event(EVENT.decode(), _sign(EVENT, WEBHOOK_SECRET, _now()))  # type: ignore[arg-type]


def test_webhook_stale_signature_fails(driver: Driver) -> None:
    with pytest.raises(SignatureExpired):
        driver.gateway.construct_webhook_event(EVENT, _sign(EVENT, WEBHOOK_SECRET, _now() - 301))
    # Within the tolerance it still verifies.
    assert driver.gateway.construct_webhook_event(EVENT, _sign(EVENT, WEBHOOK_SECRET, _now() - 200)).id


# == FAKE ONLY: behaviours localstripe lacks ======================================================================


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway(webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def fake_driver(fake: FakeGateway) -> FakeDriver:
    return FakeDriver(fake)


def test_fake_only_idempotency_same_key_same_result(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    kwargs: dict[str, Any] = dict(amount_minor=1000, currency="USD", customer_id=customer_id, payment_method_id=pm)
    first = gw.create_payment_intent(**kwargs, idempotency_key="purchase:1")
    again = gw.create_payment_intent(**kwargs, idempotency_key="purchase:1")
    assert again == first
    assert gw.charge_count() == 1 and gw.succeeded_amount(customer_id) == 1000
    with pytest.raises(IdempotencyConflict):
        gw.create_payment_intent(**{**kwargs, "amount_minor": 2000}, idempotency_key="purchase:1")
    assert gw.create_customer(idempotency_key="c:1") == gw.create_customer(idempotency_key="c:1")
    refund = gw.refund(first.id, amount_minor=100, idempotency_key="refund:1")
    assert gw.refund(first.id, amount_minor=100, idempotency_key="refund:1") == refund
    assert gw.succeeded_amount(customer_id) == 900


def test_fake_only_idempotency_replays_a_decline(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key, DECLINED_AT_CHARGE)
    kwargs: dict[str, Any] = dict(amount_minor=1000, currency="USD", customer_id=customer_id, payment_method_id=pm)
    with pytest.raises(CardDeclined) as first:
        gw.create_payment_intent(**kwargs, idempotency_key="k")
    with pytest.raises(CardDeclined) as again:
        gw.create_payment_intent(**kwargs, idempotency_key="k")
    assert again.value.payment_intent_id == first.value.payment_intent_id


def test_fake_only_over_refund_is_refused(fake_driver: FakeDriver, key: Keys) -> None:
    customer_id, pm = _customer_with_card(fake_driver, key)
    paid = _pay(fake_driver, key, customer_id, pm, amount=1000)
    fake_driver.gateway.refund(paid.id, amount_minor=600, idempotency_key=key())
    with pytest.raises(RefundFailed) as caught:
        fake_driver.gateway.refund(paid.id, amount_minor=500, idempotency_key=key())
    assert caught.value.extra["reason"] == "amount_too_large"
    assert fake_driver.charged_minor(customer_id) == 400


def test_fake_only_knobs_decline_and_authenticate_next(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    gw.decline_next("insufficient_funds")
    with pytest.raises(CardDeclined) as caught:
        _pay(fake_driver, key, customer_id, pm)
    assert caught.value.decline_code == "insufficient_funds"
    assert "insufficient" not in caught.value.message  # the decline code is for staff, not the customer
    gw.require_authentication_next()
    assert _pay(fake_driver, key, customer_id, pm).status == "requires_action"
    gw.require_authentication_next()
    with pytest.raises(AuthenticationRequired):
        _pay(fake_driver, key, customer_id, pm, off_session=True)
    assert _pay(fake_driver, key, customer_id, pm).succeeded  # knobs apply to one call each
    assert gw.charge_count() == 1


def test_fake_only_timeout_after_the_charge_then_retry_with_the_same_key(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    kwargs: dict[str, Any] = dict(amount_minor=1000, currency="USD", customer_id=customer_id, payment_method_id=pm)
    gw.time_out_next("create_payment_intent", happened=True)
    with pytest.raises(GatewayTimeout) as caught:
        gw.create_payment_intent(**kwargs, idempotency_key="recharge:1")
    assert caught.value.status == 504
    assert gw.succeeded_amount(customer_id) == 1000  # it did happen
    assert gw.create_payment_intent(**kwargs, idempotency_key="recharge:1").succeeded
    assert gw.charge_count() == 1


def test_fake_only_timeout_before_the_charge_and_unavailable(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    gw.time_out_next(happened=False)
    with pytest.raises(GatewayTimeout):
        _pay(fake_driver, key, customer_id, pm)
    gw.unavailable_next()
    with pytest.raises(GatewayUnavailable) as caught:
        _pay(fake_driver, key, customer_id, pm)
    assert caught.value.status == 503 and "not been charged" in caught.value.message
    assert gw.charge_count() == 0


def test_fake_only_failed_refund(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    paid = _pay(fake_driver, key, customer_id, pm, amount=1000)
    gw.fail_next_refund("charge_disputed")
    with pytest.raises(RefundFailed) as caught:
        gw.refund(paid.id, amount_minor=100, idempotency_key="refund:1")
    assert caught.value.extra["reason"] == "charge_disputed"
    assert gw.succeeded_amount(customer_id) == 1000
    # A refused refund is not remembered under its key: the same request may be retried.
    assert gw.refund(paid.id, amount_minor=100, idempotency_key="refund:1").amount_minor == 100


def test_fake_only_dispute_events_are_signed_like_stripe(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    paid = _pay(fake_driver, key, customer_id, pm, amount=1000)
    opened = gw.open_dispute(paid.id)
    event = gw.construct_webhook_event(opened.payload, opened.signature_header)
    assert event.type == "charge.dispute.created" and event.id == opened.event_id
    assert event.data_object["payment_intent"] == paid.id and event.data_object["amount"] == 1000
    assert event.data_object["metadata"] == {"purchase_id": "42", "note": "Top-up 10.00 USD"}
    # The official library accepts the fake's signatures: the header format is Stripe's.
    stripe.WebhookSignature.verify_header(opened.payload.decode(), opened.signature_header, WEBHOOK_SECRET, 300)
    closed = gw.close_dispute(event.data_object["id"], won=False)
    assert gw.construct_webhook_event(closed.payload, closed.signature_header).data_object["status"] == "lost"


def test_fake_only_records_events_and_signs_any_of_them(fake_driver: FakeDriver, key: Keys) -> None:
    gw = fake_driver.gateway
    customer_id, pm = _customer_with_card(fake_driver, key)
    paid = _pay(fake_driver, key, customer_id, pm)
    gw.refund(paid.id, amount_minor=1000, idempotency_key=key())
    types = [e["type"] for e in gw.events]
    assert types == [
        "customer.created", "payment_method.attached", "payment_intent.succeeded", "charge.refunded", "refund.created",
    ]  # fmt: skip
    hook = gw.event_for_payment_intent(paid.id)
    assert gw.construct_webhook_event(hook.payload, hook.signature_header).data_object["status"] == "succeeded"
    stale = gw.signed(hook.event, timestamp=_now() - 3600)
    with pytest.raises(SignatureExpired):
        gw.construct_webhook_event(stale.payload, stale.signature_header)


def test_fake_only_ids_are_deterministic(key: Keys) -> None:
    def run() -> list[str]:
        gw = FakeGateway()
        driver = FakeDriver(gw)
        customer_id, pm = _customer_with_card(driver, Keys())
        return [customer_id, pm, _pay(driver, Keys(), customer_id, pm).id]

    assert run() == run() == ["cus_fake_000001", "pm_fake_000001", "pi_fake_000001"]


# == LOCALSTRIPE GAPS: pinned so that a change in localstripe is noticed ===========================================


def test_localstripe_gap_idempotency_key_is_ignored(ls_driver: LocalStripeDriver, key: Keys) -> None:
    """Stripe would return the first intent; localstripe makes a second. The ledger's own keys cover this."""
    customer_id, pm = _customer_with_card(ls_driver, key)
    kwargs: dict[str, Any] = dict(amount_minor=1000, currency="USD", customer_id=customer_id, payment_method_id=pm)
    first = ls_driver.gateway.create_payment_intent(**kwargs, idempotency_key="purchase:1")
    second = ls_driver.gateway.create_payment_intent(**kwargs, idempotency_key="purchase:1")
    assert first.id != second.id
    assert ls_driver.charged_minor(customer_id) == 2000


def test_localstripe_gap_setup_intent_for_an_unknown_customer_is_created(
    ls_driver: LocalStripeDriver, key: Keys
) -> None:
    """Stripe answers 404 (GatewayNotFound, as the fake does); localstripe does not check the customer."""
    assert ls_driver.gateway.create_setup_intent("cus_doesnotexist", idempotency_key=key()).id.startswith("seti_")
    with pytest.raises(GatewayNotFound):
        FakeGateway().create_setup_intent("cus_doesnotexist", idempotency_key=key())


def test_localstripe_gap_payment_intent_list_has_no_created_filter(ls_driver: LocalStripeDriver) -> None:
    """Stripe filters `created[gte]` server-side; localstripe answers 400, so the adapter filters itself."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        ls_driver.raw.v1.payment_intents.list(cast(Any, {"created": {"gte": 1}}))
    assert caught.value.http_status == 400


def test_localstripe_gap_over_refund_is_accepted(ls_driver: LocalStripeDriver, key: Keys) -> None:
    """Stripe and the fake refuse it (RefundFailed); localstripe accepts. The refund service checks first."""
    customer_id, pm = _customer_with_card(ls_driver, key)
    paid = _pay(ls_driver, key, customer_id, pm, amount=1000)
    assert ls_driver.gateway.refund(paid.id, amount_minor=5000, idempotency_key=key()).amount_minor == 5000


# == STRIPE ADAPTER =============================================================================================


def test_api_version_is_the_one_the_library_is_built_for() -> None:
    assert STRIPE_API_VERSION == stripe.api_version


def test_live_key_is_never_sent_to_a_stand_in() -> None:
    with pytest.raises(ConfigError):
        StripeGateway("sk_live_abc", api_base="http://127.0.0.1:9")
    with pytest.raises(ConfigError):
        StripeGateway.from_config(Config(env="test"))


class _Recorder(BaseHTTPRequestHandler):
    """A loopback HTTP server that records requests and answers with a canned body (or never answers)."""

    requests: list[tuple[str, dict[str, str], bytes]]
    body: bytes = b"{}"
    status: int = 200
    hang_s: float = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        self.requests.append((self.path, dict(self.headers.items()), self.rfile.read(length)))
        if self.hang_s:
            time.sleep(self.hang_s)
            return
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"requests": [], "body": b"{}", "status": 200, "hang_s": 0.0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_sends_our_idempotency_key_and_the_pinned_version_once(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    handler.body = json.dumps({"id": "cus_1", "object": "customer", "email": None, "metadata": {}}).encode()
    gw = StripeGateway(TEST_SECRET_KEY, api_base=url)
    assert gw.create_customer(metadata={"wallet_id": "1"}, idempotency_key="wallet:1:customer").id == "cus_1"
    [(path, headers, body)] = handler.requests
    assert path == "/v1/customers"
    assert headers["Idempotency-Key"] == "wallet:1:customer"
    assert headers["Stripe-Version"] == STRIPE_API_VERSION
    assert body == b"metadata[wallet_id]=1"


# Answers only real Stripe gives (localstripe's errors carry no payment_intent), in Stripe's documented shape.
STRIPE_DECLINE = {
    "error": {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
        "charge": "ch_1",
        "payment_intent": {"id": "pi_1", "object": "payment_intent", "status": "requires_payment_method"},
    }
}
STRIPE_AUTH_REQUIRED = {
    "error": {
        "type": "card_error",
        "code": "authentication_required",
        "message": "This payment requires authentication.",
        "payment_method": {"id": "pm_1", "object": "payment_method"},
        "payment_intent": {
            "id": "pi_2",
            "object": "payment_intent",
            "status": "requires_payment_method",
            "client_secret": "pi_2_secret_x",
        },
    }
}


@pytest.mark.parametrize("off_session", [False, True])
def test_stripe_card_errors_are_mapped(recorder: tuple[str, type[_Recorder]], off_session: bool) -> None:
    url, handler = recorder
    gw = StripeGateway(TEST_SECRET_KEY, api_base=url)
    kwargs: dict[str, Any] = dict(amount_minor=500, currency="EUR", customer_id="cus_1", payment_method_id="pm_1")
    handler.status, handler.body = 402, json.dumps(STRIPE_DECLINE).encode()
    with pytest.raises(CardDeclined) as declined:
        gw.create_payment_intent(**kwargs, idempotency_key="k1", off_session=off_session)
    assert (declined.value.payment_intent_id, declined.value.decline_code) == ("pi_1", "insufficient_funds")
    handler.body = json.dumps(STRIPE_AUTH_REQUIRED).encode()
    with pytest.raises(AuthenticationRequired) as auth:
        gw.create_payment_intent(**kwargs, idempotency_key="k2", off_session=off_session)
    assert (auth.value.payment_intent_id, auth.value.client_secret, auth.value.payment_method_id) == (
        "pi_2", "pi_2_secret_x", "pm_1",
    )  # fmt: skip
    sent = dict(urllib.parse.parse_qsl(handler.requests[0][2].decode()))
    assert sent["confirm"] == "true" and sent["currency"] == "eur" and sent["payment_method_types[0]"] == "card"
    assert ("off_session" in sent) is off_session


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, {"error": {"type": "api_error", "message": "boom"}}, GatewayTimeout),
        (429, {"error": {"type": "invalid_request_error", "code": "rate_limit"}}, GatewayUnavailable),
        (400, {"error": {"type": "idempotency_error", "message": "Keys for idempotent requests"}}, IdempotencyConflict),
        (404, {"error": {"type": "invalid_request_error", "code": "resource_missing"}}, GatewayNotFound),
        (400, {"error": {"type": "invalid_request_error", "code": "charge_already_refunded"}}, RefundFailed),
    ],
)
def test_stripe_refund_errors_are_mapped(
    recorder: tuple[str, type[_Recorder]], status: int, body: dict[str, Any], error: type[Exception]
) -> None:
    url, handler = recorder
    handler.status, handler.body = status, json.dumps(body).encode()
    with pytest.raises(error):
        StripeGateway(TEST_SECRET_KEY, api_base=url).refund("pi_1", amount_minor=100, idempotency_key="refund:1")
    assert len(handler.requests) == 1


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    gw = StripeGateway(TEST_SECRET_KEY, api_base=f"http://127.0.0.1:{port}", connect_timeout_s=1)
    with pytest.raises(GatewayUnavailable):
        gw.create_customer(idempotency_key="k")


def test_no_answer_is_a_timeout_with_unknown_outcome(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    handler.hang_s = 2.0
    gw = StripeGateway(TEST_SECRET_KEY, api_base=url, read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(GatewayTimeout):
        gw.create_customer(idempotency_key="k")
    assert time.monotonic() - started < 1.5
    assert len(handler.requests) == 1  # sent once: no automatic retry


def test_real_localstripe_webhook_verifies(localstripe: LocalStripe, recorder: tuple[str, type[_Recorder]]) -> None:
    """localstripe's own delivery (its signature, its body) passes construct_webhook_event."""
    url, handler = recorder
    localstripe.reset()
    hook_id = f"contract-{os.getpid()}"
    localstripe.register_webhook(
        f"{url}/webhooks/stripe", WEBHOOK_SECRET, webhook_id=hook_id, events=["customer.created"]
    )
    try:
        gw = _stripe_gateway(localstripe)
        customer = gw.create_customer(email="hook@example.test", idempotency_key="k")
        deadline = time.monotonic() + 5
        mine: list[tuple[str, dict[str, str], bytes]] = []
        while not mine and time.monotonic() < deadline:
            time.sleep(0.05)
            # Events of earlier tests may still be on their way (localstripe sends each about 1 s later).
            mine = [r for r in list(handler.requests) if customer.id.encode() in r[2]]
    finally:
        # Registrations survive reset(); an empty event filter silences this one for later tests.
        localstripe.register_webhook(f"{url}/webhooks/stripe", WEBHOOK_SECRET, webhook_id=hook_id, events=[])
    assert mine, "localstripe delivered no webhook for the customer within 5 s"
    for path, headers, body in handler.requests:  # every delivery verifies, not just ours
        event = gw.construct_webhook_event(body, headers["Stripe-Signature"])
        assert (path, event.type) == ("/webhooks/stripe", "customer.created")
    path, headers, body = mine[0]
    assert gw.construct_webhook_event(body, headers["Stripe-Signature"]).data_object["id"] == customer.id
    with pytest.raises(SignatureMismatch):
        gw.construct_webhook_event(body + b" ", headers["Stripe-Signature"])


def test_localstripe_helper_is_loopback_and_stops_its_own_process() -> None:
    pickle = "/tmp/localstripe.pickle"  # noqa: S108 - the file localstripe's CLI would write
    existed = os.path.exists(pickle)
    server = LocalStripe(start_timeout_s=20).start()
    try:
        assert server.base_url.startswith("http://127.0.0.1:") and server.running
        assert server.js_url == f"{server.base_url}/js.stripe.com/v3/"
        gw = StripeGateway(TEST_SECRET_KEY, api_base=server.base_url)
        gw.create_customer(idempotency_key="k")
    finally:
        server.stop()
    assert not server.running
    if not existed:
        assert not os.path.exists(pickle)
