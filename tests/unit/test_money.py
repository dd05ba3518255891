"""Money: parsing, formatting, minor<->micro conversion and their errors (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credits import money
from credits.errors import ValidationError

# ---------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0", 0),
        ("10", 10_000_000),
        ("10.00", 10_000_000),
        ("12.3456", 12_345_600),
        ("0.000001", 1),
        ("  7.5 ", 7_500_000),
        ("9999999999999.999999", 9_999_999_999_999_999_999),
    ],
)
def test_parse(text, micro):
    assert money.parse(text) == micro


@pytest.mark.parametrize(
    "text",
    ["", " ", "abc", "1.2.3", "1,00", "1e3", "0x10", "10.", ".5", "+1", "1.0000001", "12345678901234",
     "NaN", "inf", "1_000", "\u0661\u0660", "\uff11", "10.\u0665"],
)
def test_parse_rejects(text):
    with pytest.raises(ValidationError):
        money.parse(text)


@pytest.mark.parametrize("value", [10, 10.5, None, b"10", True])
def test_parse_rejects_non_strings(value):
    with pytest.raises(ValidationError):
        money.parse(value)


def test_parse_negative():
    with pytest.raises(ValidationError, match="negative"):
        money.parse("-1.00")
    assert money.parse("-1.50", allow_negative=True) == -1_500_000


def test_parse_amount_in_currency_precision():
    assert money.parse_amount("10.25", "USD") == 10_250_000
    assert money.parse_amount("1000", "JPY") == 1_000_000_000
    assert money.parse_amount("1.125", "KWD") == 1_125_000
    with pytest.raises(ValidationError, match="at most 2 decimals"):
        money.parse_amount("10.255", "USD")
    with pytest.raises(ValidationError, match="at most 0 decimals"):
        money.parse_amount("10.5", "JPY")


@pytest.mark.parametrize("text", ["0", "0.00", "1000000.01", "9999999999999"])
def test_parse_amount_range(text):
    with pytest.raises(ValidationError):
        money.parse_amount(text, "USD")


def test_parse_amount_max_is_allowed():
    assert money.parse_amount("1000000.00", "USD") == money.MAX_AMOUNT


def test_parse_amount_unknown_currency():
    with pytest.raises(ValidationError, match="unknown currency"):
        money.parse_amount("1.00", "XXX")


# ---------------------------------------------------------------- check_amount / currency


@pytest.mark.parametrize("value", [1, 1_000_000, money.MAX_AMOUNT])
def test_check_amount_accepts(value):
    assert money.check_amount(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "greater than zero"),
        (-1, "greater than zero"),
        (money.MAX_AMOUNT + 1, "maximum"),
        (10**30, "maximum"),
        (1.0, "integers"),
        (True, "integers"),
        ("1", "integers"),
        (None, "integers"),
    ],
)
def test_check_amount_rejects(value, message):
    with pytest.raises(ValidationError, match=message):
        money.check_amount(value)


@pytest.mark.parametrize("code", ["usd", "XXX", "", "US", None, 840])
def test_check_currency_rejects(code):
    with pytest.raises(ValidationError, match="unknown currency"):
        money.check_currency(code)
    assert not money.is_known_currency(code) if isinstance(code, str) else True


def test_check_currency_accepts():
    assert money.check_currency("EUR") == "EUR"
    assert money.is_known_currency("JPY")


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("micro", "text"),
    [(0, "0.000000"), (1, "0.000001"), (12_345_600, "12.345600"), (-1_500_000, "-1.500000"),
     (-1, "-0.000001"), (money.MAX_AMOUNT, "1000000.000000")],
)
def test_format_micro(micro, text):
    assert money.format_micro(micro) == text


@pytest.mark.parametrize(
    ("micro", "currency", "text"),
    [
        (12_345_600, "USD", "12.34 USD"),
        (12_349_999, "USD", "12.34 USD"),  # toward zero
        (-12_349_999, "USD", "-12.34 USD"),
        (1_999_999, "JPY", "1 JPY"),
        (1_125_900, "KWD", "1.125 KWD"),
        (50_000, "EUR", "0.05 EUR"),
    ],
)
def test_format_display(micro, currency, text):
    assert money.format_display(micro, currency) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**19) + 1, 10**19 - 1))
def test_format_parse_round_trip(micro):
    assert money.parse(money.format_micro(micro), allow_negative=True) == micro


# ---------------------------------------------------------------- minor <-> micro


@pytest.mark.parametrize(
    ("minor", "currency", "micro"),
    [(1, "USD", 10_000), (1234, "USD", 12_340_000), (500, "JPY", 500_000_000), (1, "KWD", 1_000), (0, "USD", 0)],
)
def test_minor_micro_conversions(minor, currency, micro):
    assert money.minor_to_micro(minor, currency) == micro
    assert money.micro_to_minor(micro, currency) == minor


def test_micro_to_minor_must_be_exact():
    with pytest.raises(ValidationError, match="whole number"):
        money.micro_to_minor(12_345, "USD")
    with pytest.raises(ValidationError, match="whole number"):
        money.micro_to_minor(1_500_000, "JPY")


@pytest.mark.parametrize("value", [1.0, 10.5, "100", True, None])
def test_conversions_reject_non_int(value):
    with pytest.raises(ValidationError):
        money.minor_to_micro(value, "USD")
    with pytest.raises(ValidationError):
        money.micro_to_minor(value, "USD")


def test_conversions_reject_unknown_currency():
    with pytest.raises(ValidationError):
        money.minor_to_micro(100, "XXX")
    with pytest.raises(ValidationError):
        money.micro_to_minor(1_000_000, "XXX")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**12), st.sampled_from(sorted(money.CURRENCY_EXPONENTS)))
def test_minor_round_trip_every_currency(minor, currency):
    micro = money.minor_to_micro(minor, currency)
    assert isinstance(micro, int)
    assert micro == minor * 10 ** (6 - money.CURRENCY_EXPONENTS[currency])
    assert money.micro_to_minor(micro, currency) == minor


def test_ceil_div():
    assert money.ceil_div(10, 3) == 4
    assert money.ceil_div(9, 3) == 3
    assert money.ceil_div(0, 7) == 0
    assert money.ceil_div(1, 1_000_000) == 1
