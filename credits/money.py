"""Money: int micro-units in the ledger, minor units at the gateway, decimal strings on the wire. Never float."""

from __future__ import annotations

import re

from credits.errors import ValidationError

MICRO = 1_000_000
#: The largest amount any single operation may move: 1,000,000.00 currency units.
MAX_AMOUNT = 1_000_000 * MICRO

# ISO 4217 codes this service accepts, with their minor-unit exponent.
CURRENCY_EXPONENTS: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "SGD": 2, "AUD": 2, "CAD": 2, "NZD": 2, "CHF": 2, "HKD": 2,
    "MYR": 2, "INR": 2, "PHP": 2, "THB": 2, "IDR": 2, "CNY": 2, "SEK": 2, "NOK": 2, "DKK": 2,
    "PLN": 2, "ZAR": 2, "MXN": 2, "BRL": 2, "AED": 2, "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0,
    "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}  # fmt: skip

#: micro-units per minor unit, per currency (10_000 for cents).
_FACTORS: dict[str, int] = {code: [1_000_000, 100_000, 10_000, 1_000][exp] for code, exp in CURRENCY_EXPONENTS.items()}

# ASCII digits only: `\d` would also accept other scripts' digits ("١٠"), which int() then happily reads.
_DECIMAL = re.compile(r"^(?P<sign>-)?(?P<int>[0-9]{1,13})(?:\.(?P<frac>[0-9]{1,6}))?$")


def is_known_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS


def check_currency(code: str) -> str:
    """Return the code if this service knows it; raise ValidationError otherwise."""
    if not isinstance(code, str) or code not in CURRENCY_EXPONENTS:
        raise ValidationError(f"unknown currency {code!r}", field="currency")
    return code


def parse(text: str, *, allow_negative: bool = False) -> int:
    """Parse a decimal string ("12.3456") into micro-units; at most 6 decimals, never a float."""
    if not isinstance(text, str):
        raise ValidationError("an amount must be a decimal string such as \"10.00\"", field="amount")
    m = _DECIMAL.match(text.strip())
    if not m:
        raise ValidationError(f"not a valid amount: {text[:40]!r}", field="amount")
    frac = (m.group("frac") or "").ljust(6, "0")
    value = int(m.group("int")) * MICRO + int(frac)
    if m.group("sign"):
        if not allow_negative:
            raise ValidationError("the amount must not be negative", field="amount")
        value = -value
    return value


def parse_amount(text: str, currency: str) -> int:
    """Parse a positive amount within MAX_AMOUNT, in the precision of the currency's minor unit."""
    check_currency(currency)
    value = parse(text)
    check_amount(value)
    exponent = CURRENCY_EXPONENTS[currency]
    if value % _FACTORS[currency]:
        raise ValidationError(f"{currency} amounts have at most {exponent} decimals", field="amount")
    return value


def check_amount(value: int) -> int:
    """Return `value` if it is a positive int micro amount within MAX_AMOUNT; raise ValidationError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("amounts are integers of micro-units", field="amount")
    if value <= 0:
        raise ValidationError("the amount must be greater than zero", field="amount")
    if value > MAX_AMOUNT:
        raise ValidationError(f"the amount is larger than the maximum of {format_micro(MAX_AMOUNT)}", field="amount")
    return value


def format_micro(value: int) -> str:
    """Format micro-units as a decimal string with 6 decimals: 12345600 -> "12.345600"."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def format_display(value: int, currency: str) -> str:
    """Format micro-units in the currency's own precision for people, rounding toward zero: "12.34 USD"."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), MICRO)
    if exponent == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{frac // _FACTORS.get(currency, 10_000):0{exponent}d} {currency}"


def _check_int(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an integer, not {type(value).__name__}", field="amount")


def minor_to_micro(minor: int, currency: str) -> int:
    """Convert gateway minor units (cents) to micro-units, exactly. Raises ValidationError on a non-int."""
    _check_int(minor, "an amount in minor units")
    check_currency(currency)
    return minor * _FACTORS[currency]


def micro_to_minor(micro: int, currency: str) -> int:
    """Convert micro-units to gateway minor units; raise ValidationError unless it is an exact int."""
    _check_int(micro, "an amount in micro-units")
    check_currency(currency)
    factor = _FACTORS[currency]
    if micro % factor:
        raise ValidationError(f"{format_micro(micro)} is not a whole number of {currency} minor units")
    return micro // factor


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of a / b for b > 0: the one rounding rule (up) the ledger uses."""
    return -(-a // b)
