"""Pure rating maths in closed form: billed seconds, cost, max duration, number normalisation, prefix match."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime

from credits.errors import ValidationError
from credits.money import MAX_AMOUNT, ceil_div

#: Default for CREDITS_MAX_CALL_DURATION_S: no single authorisation allows a call longer than this.
DEFAULT_MAX_CALL_DURATION_S = 7200
#: The longest billing increment a rate may have (one day): anything larger is a typo, not a tariff.
MAX_INCREMENT_S = 86_400
#: E.164 allows 15 digits; the switch API accepts up to 20 so that technical prefixes still fit.
MAX_NUMBER_DIGITS = 20
MAX_DESTINATION_LEN = 120

_DIGITS = re.compile(r"[0-9]+")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Rate:
    """One tariff line of a rate plan; money in micro-units of the plan currency.

    `first_increment_s`/`next_increment_s` are the telecom "X/Y" billing increments. `effective_from` is the
    first calendar day the line applies (None: always). Raises ValidationError on construction when a field is
    out of range, so a Rate that exists is always safe to rate with.
    """

    prefix: str
    destination: str
    rate_per_minute: int
    connect_fee: int
    first_increment_s: int
    next_increment_s: int
    effective_from: date | None = None

    def __post_init__(self) -> None:
        problems = rate_problems(self)
        if problems:
            raise ValidationError("; ".join(problems), field="rate")


def rate_problems(rate: Rate) -> list[str]:
    """Return what is wrong with `rate`'s fields as readable sentences (empty when it is valid)."""
    problems: list[str] = []
    if not isinstance(rate.prefix, str) or not _DIGITS.fullmatch(rate.prefix):
        problems.append(f"prefix {rate.prefix!r} must be digits only")
    elif len(rate.prefix) > MAX_NUMBER_DIGITS:
        problems.append(f"prefix {rate.prefix!r} is longer than {MAX_NUMBER_DIGITS} digits")
    if not isinstance(rate.destination, str) or not rate.destination.strip():
        problems.append("destination must not be empty")
    elif rate.destination != rate.destination.strip() or not rate.destination.isprintable():
        problems.append("destination must not have surrounding spaces or control characters")
    elif len(rate.destination) > MAX_DESTINATION_LEN:
        problems.append(f"destination is longer than {MAX_DESTINATION_LEN} characters")
    for name in ("rate_per_minute", "connect_fee"):
        value = getattr(rate, name)
        if not _is_int(value):
            problems.append(f"{name} must be an int of micro-units")
        elif value < 0:
            problems.append(f"{name} must not be negative")
        elif value > MAX_AMOUNT:
            problems.append(f"{name} is larger than the maximum amount")
    for name in ("first_increment_s", "next_increment_s"):
        value = getattr(rate, name)
        if not _is_int(value):
            problems.append(f"{name} must be an int number of seconds")
        elif not 1 <= value <= MAX_INCREMENT_S:
            problems.append(f"{name} must be between 1 and {MAX_INCREMENT_S} seconds")
    eff = rate.effective_from
    # A datetime is a date subclass, but comparing one with a date raises TypeError at lookup time.
    if eff is not None and (not isinstance(eff, date) or isinstance(eff, datetime)):
        problems.append("effective_from must be a date or None")
    return problems


def _check_duration(d: int) -> None:
    if not _is_int(d) or d < 0:
        raise ValidationError(f"a duration must be a non-negative int number of seconds, not {d!r}", field="duration_s")


def billed_seconds(d: int, first_increment_s: int, next_increment_s: int) -> int:
    """Return the seconds billed for a call of `d` seconds under "X/Y" increments.

    0 when d == 0; X when 0 < d <= X; else X + ceil((d - X) / Y) * Y. Raises ValidationError for a
    negative or non-int duration.
    """
    if d <= first_increment_s:
        if d > 0:
            return first_increment_s
        _check_duration(d)
        return 0
    return first_increment_s + ceil_div(d - first_increment_s, next_increment_s) * next_increment_s


def cost(rate: Rate, d: int) -> int:
    """Return what a call of `d` seconds costs, in micro-units.

    connect_fee + ceil(rate_per_minute * billed_seconds / 60): one rounding, up, per call. An unanswered
    or zero-length call (d == 0) costs 0, connect fee included. Raises ValidationError for a negative d.
    """
    x = rate.first_increment_s
    if d <= x:
        if d > 0:
            billed = x
        else:
            _check_duration(d)
            return 0
    else:
        y = rate.next_increment_s
        billed = x + ceil_div(d - x, y) * y
    return rate.connect_fee + ceil_div(rate.rate_per_minute * billed, 60)


def reserve_amount(rate: Rate, d: int) -> int:
    """Return the hold a call allowed `d` seconds must cover: exactly cost(rate, d)."""
    return cost(rate, d)


def max_duration(rate: Rate, available: int, cap: int = DEFAULT_MAX_CALL_DURATION_S) -> int:
    """Return the longest call, in seconds, whose cost fits in `available` micro-units, at most `cap`.

    Closed form. Every d in (X + (k-1)Y, X + kY] costs the same, so the answer is the end of the last
    affordable increment, X + kY with k the largest integer where
    connect_fee + ceil(rate * (X + kY) / 60) <= available. As ceil(a / 60) <= b <=> a <= 60b for integers,
    k = floor((60 * (available - connect_fee) - rate * X) / (rate * Y)).

    Returns 0 when even the first increment is unaffordable (cost(X) > available): the caller refuses the
    call with insufficient_credit. A free destination (rate 0) whose connect fee is affordable gets `cap`.
    Raises ValidationError when `cap` < 1.
    """
    if not _is_int(cap) or cap < 1:
        raise ValidationError(f"the duration cap must be a positive int, not {cap!r}", field="cap")
    budget = available - rate.connect_fee
    if budget < 0:
        return 0
    rpm = rate.rate_per_minute
    x = rate.first_increment_s
    headroom = 60 * budget - rpm * x
    if headroom < 0:
        return 0
    if rpm == 0:
        return cap
    k = headroom // (rpm * rate.next_increment_s)
    return min(x + k * rate.next_increment_s, cap)


def normalise_number(number: str, field: str = "number") -> str:
    """Return a phone number as E.164 digits without '+'.

    Accepts one leading international prefix: '+', '00' or '011' (North America). After it, only ASCII
    digits, 1 to 20 of them. Raises ValidationError (naming `field`) for anything else: letters, spaces,
    punctuation, an empty or too long number.
    """
    if not isinstance(number, str):
        raise ValidationError(f"{field} must be a string of digits", field=field)
    if number.startswith("+"):
        digits = number[1:]
    elif number.startswith("00"):
        digits = number[2:]
    elif number.startswith("011"):
        digits = number[3:]
    else:
        digits = number
    if not _DIGITS.fullmatch(digits):
        raise ValidationError(f"{field} must be digits with an optional leading +", field=field)
    if len(digits) > MAX_NUMBER_DIGITS:
        raise ValidationError(f"{field} has more than {MAX_NUMBER_DIGITS} digits", field=field)
    return digits


def _effective_key(rate: Rate) -> date:
    return rate.effective_from or date.min


class PrefixTable:
    """Longest-prefix match over a rate plan, with effective dates.

    Built once from a plan's rates, then read-only and safe to share between threads. A lookup probes a
    dict from the longest prefix length the plan has down to the shortest: at most one probe per distinct
    prefix length, whatever the plan's size.
    """

    __slots__ = ("_by_prefix", "_lengths_for", "_max_len", "_size")

    def __init__(self, rates: Iterable[Rate]) -> None:
        """Index `rates`; raise ValidationError when two share a prefix and effective_from."""
        grouped: dict[str, list[Rate]] = {}
        for rate in rates:
            grouped.setdefault(rate.prefix, []).append(rate)
        by_prefix: dict[str, tuple[Rate, ...]] = {}
        for prefix, versions in grouped.items():
            # Newest first, so a lookup takes the first version already in force on the call date.
            versions.sort(key=_effective_key, reverse=True)
            for newer, older in zip(versions, versions[1:], strict=False):
                if newer.effective_from == older.effective_from:
                    raise ValidationError(
                        f"two rates for prefix {prefix} with effective_from {newer.effective_from}", field="rates"
                    )
            by_prefix[prefix] = tuple(versions)
        self._by_prefix = by_prefix
        self._size = sum(len(v) for v in by_prefix.values())
        lengths = sorted({len(p) for p in by_prefix}, reverse=True)
        self._max_len = lengths[0] if lengths else 0
        # _lengths_for[n]: the prefix lengths worth probing for a number of n digits, longest first.
        self._lengths_for = [tuple(n_ for n_ in lengths if n_ <= n) for n in range(self._max_len + 1)]

    def __len__(self) -> int:
        return self._size

    @property
    def max_prefix_len(self) -> int:
        return self._max_len

    def rates(self) -> Iterator[Rate]:
        """Yield every rate, every version, in prefix order then oldest first."""
        for prefix in sorted(self._by_prefix):
            yield from reversed(self._by_prefix[prefix])

    def lookup(self, number: str, on: date) -> Rate | None:
        """Return the rate for `number` on day `on`, or None when no prefix matches.

        `number` must already be normalised (normalise_number). For each prefix of the number, longest
        first, the version with the latest effective_from <= `on` wins; a prefix whose only versions start
        after `on` does not exist yet, so a shorter prefix is tried.
        """
        n = len(number)
        lengths = self._lengths_for[n] if n < self._max_len else self._lengths_for[self._max_len]
        get = self._by_prefix.get
        for length in lengths:
            versions = get(number[:length])
            if versions is not None:
                for rate in versions:
                    eff = rate.effective_from
                    if eff is None or eff <= on:
                        return rate
        return None
