"""Pure payment rules without a database: the card-number test, the payment-page CSP (I56), the gateway choice,
purchase amounts, config validation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from credits import config
from credits.config import Config
from credits.errors import ConfigError, ValidationError
from credits.payments import provider, service
from credits.payments.fake_gateway import FakeGateway
from credits.payments.stripe_gateway import StripeGateway
from credits.web.card_guard import holds_card_number, luhn_ok
from credits.web.csp import payment_page_policy


@pytest.fixture
def settings() -> Iterator[None]:
    previous = config.current()
    config.install(Config(env="test"))
    yield
    config.install(previous)


@pytest.mark.parametrize("number", ["4242424242424242", "4000002500003155", "5555555555554444", "378282246310005",
                                    "6011111111111117", "4000056655665556", "4222222222222", "6200000000000005"])
def test_luhn_valid_test_cards(number: str) -> None:
    assert luhn_ok(number) and holds_card_number(number)


@pytest.mark.parametrize(("text", "expected"), [
    ("4242 4242 4242 4242", True),
    ("4242-4242-4242-4242", True),
    ("pay with 3782 822463 10005 please", True),
    ("4242424242424241", False),           # Luhn fails
    ("424242424242", False),               # 12 digits
    ("42424242424242424242", False),       # 20 digits: not a card number
    ("+6561234567", False),
    ("+4242424242424242", False),          # a phone number in E.164 notation, even if it passes Luhn
    ("+44 20 7946 0958", False),            # phone formatting with spaces
    ("+44, card 4242424242424242", True),   # but not a number merely written after one
    ("0000000000000", False),              # passes Luhn, but only zeros
    ("4242  4242 4242 4242", False),       # two spaces break the run into pieces too short
    ("ref 2026-11-22 amount 10.00", False),
])
def test_card_number_detection(text: str, expected: bool) -> None:
    assert holds_card_number(text) is expected


def test_I56_payment_page_csp_on_stripe() -> None:
    policy = payment_page_policy(Config(env="test"))
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    assert directives["script-src"] == "'self' https://js.stripe.com"
    assert directives["frame-src"] == "'self' https://js.stripe.com https://hooks.stripe.com"
    assert directives["connect-src"] == "'self' https://api.stripe.com"
    assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
    assert "unsafe-inline" not in policy and "*" not in policy


def test_I56_payment_page_csp_with_localstripe() -> None:
    cfg = Config(env="test", stripe_api_base="http://127.0.0.1:8420")
    assert provider.stripe_js_url(cfg) == "http://127.0.0.1:8420/js.stripe.com/v3/"
    policy = payment_page_policy(cfg)
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    for name in ("script-src", "frame-src", "connect-src"):
        assert directives[name] == "'self' http://127.0.0.1:8420", name
    assert "stripe.com" not in policy
    explicit = Config(env="test", stripe_js_url="http://127.0.0.1:9999/js.stripe.com/v3/")
    assert "'self' http://127.0.0.1:9999" in payment_page_policy(explicit)


def test_gateway_is_chosen_from_the_settings() -> None:
    assert isinstance(provider.build(Config(env="test")), FakeGateway)
    assert isinstance(provider.build(Config(env="development")), FakeGateway)
    local = provider.build(Config(env="development", stripe_api_base="http://127.0.0.1:8420"))
    assert isinstance(local, StripeGateway) and local.api_base == "http://127.0.0.1:8420"
    assert isinstance(provider.build(Config(env="test", stripe_secret_key="sk_test_x")), StripeGateway)
    with pytest.raises(ConfigError):
        provider.build(Config(env="production"))  # no key: refuses rather than faking
    with pytest.raises(ConfigError):
        provider.build(Config(env="production", payment_gateway="fake"))
    assert provider.publishable_key(Config(env="test")).startswith("pk_test_")
    assert provider.publishable_key(Config(env="test", stripe_publishable_key="pk_live_x")) == "pk_live_x"


def test_payment_settings_are_validated() -> None:
    Config.from_env({}, env="test")
    for bad in ({"payment_gateway": "paypal"}, {"purchase_packages": "ten"}, {"purchase_custom_min": "600.00"},
                {"refund_approval_above": "-1"}, {"auto_recharge_max_failures": 0}):
        with pytest.raises(ConfigError):
            Config.from_env({}, env="test", **bad)


@pytest.mark.usefixtures("settings")
def test_purchase_amounts() -> None:
    assert service.packages("USD") == [5_000_000, 10_000_000, 20_000_000, 50_000_000]
    assert service.purchase_amount("10.00", "USD") == 10_000_000
    assert service.purchase_amount("7.35", "USD") == 7_350_000
    assert service.purchase_amount("500", "USD") == 500_000_000
    assert service.purchase_amount("100", "JPY") == 100_000_000  # the same figures in any currency
    for bad in ("4.99", "500.01", "10.001", "1e3", " ", "0", "-5"):
        with pytest.raises(ValidationError):
            service.purchase_amount(bad, "USD")
    with pytest.raises(ValidationError):
        service.purchase_amount("10.5", "JPY")  # yen have no minor unit
    with pytest.raises(ValidationError):
        service.purchase_amount(10, "USD")  # type: ignore[arg-type]


def test_digits_inside_a_token_are_not_a_card_number() -> None:
    # A hex HMAC (the signed-out form token) holding a Luhn-valid 16-digit stretch was refused as a card
    # number about once in a hundred sign-ins; digits glued to letters belong to the token.
    token = "9f3a" + "4111111111111111" + "c2e0" + "ab" * 22
    assert luhn_ok("4111111111111111")
    assert not holds_card_number(token)
    assert not holds_card_number("tok_4111111111111111")
    assert holds_card_number("card: 4111111111111111.")  # punctuation still delimits a typed number
