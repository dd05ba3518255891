"""Rating maths: billed seconds, cost, max duration, number normalisation and prefix match, by hand and by property."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits.errors import ValidationError
from credits.rating.engine import (
    DEFAULT_MAX_CALL_DURATION_S,
    PrefixTable,
    Rate,
    billed_seconds,
    cost,
    max_duration,
    normalise_number,
    reserve_amount,
)

U = 1_000_000  # micro-units per currency unit


def rate(rpm: int, x: int, y: int, fee: int = 0, prefix: str = "44", eff: date | None = None) -> Rate:
    return Rate(prefix, "Test", rpm, fee, x, y, eff)


# --- billed seconds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "x", "y", "billed"),
    [
        (0, 60, 60, 0),  # unanswered: nothing billed
        (1, 60, 60, 60),  # d <= X -> X
        (60, 60, 60, 60),  # exactly X
        (61, 60, 60, 120),  # 60 + ceil(1/60)*60
        (125, 60, 60, 180),  # 60 + ceil(65/60)*60 = 60 + 2*60
        (1, 30, 6, 30),  # d <= X -> X
        (31, 30, 6, 36),  # 30 + ceil(1/6)*6
        (36, 30, 6, 36),  # on a boundary: 30 + ceil(6/6)*6
        (37, 30, 6, 42),  # 30 + ceil(7/6)*6 = 30 + 12
        (125, 30, 6, 126),  # 30 + ceil(95/6)*6 = 30 + 16*6
        (1, 1, 1, 1),
        (7, 1, 1, 7),  # 1 + ceil(6/1)*1
        (30, 60, 1, 60),  # d <= X
        (61, 60, 1, 61),  # 60 + ceil(1/1)
        (45, 45, 10, 45),  # X not a multiple of Y: d == X
        (46, 45, 10, 55),  # 45 + ceil(1/10)*10
        (55, 45, 10, 55),  # boundary: 45 + ceil(10/10)*10
        (56, 45, 10, 65),  # 45 + ceil(11/10)*10 = 45 + 20
        (100, 45, 10, 105),  # 45 + ceil(55/10)*10 = 45 + 60
    ],
)
def test_billed_seconds_by_hand(d: int, x: int, y: int, billed: int) -> None:
    assert billed_seconds(d, x, y) == billed


@pytest.mark.parametrize("d", [-1, -61])
def test_negative_durations_are_refused(d: int) -> None:
    with pytest.raises(ValidationError):
        billed_seconds(d, 60, 60)
    with pytest.raises(ValidationError):
        cost(rate(100_000, 60, 60), d)


# --- cost --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "d", "expected"),
    [
        # 60/60 at 0.10/min = 100_000 micro/min
        (rate(100_000, 60, 60), 0, 0),  # zero duration costs nothing
        (rate(100_000, 60, 60), 1, 100_000),  # billed 60: ceil(100_000*60/60)
        (rate(100_000, 60, 60), 60, 100_000),  # boundary: still one minute
        (rate(100_000, 60, 60), 61, 200_000),  # billed 120: 100_000*120/60
        (rate(100_000, 60, 60), 125, 300_000),  # billed 180: 100_000*180/60
        # 30/6 at 0.06/min = 60_000 micro/min (1_000 micro/s)
        (rate(60_000, 30, 6), 1, 30_000),  # billed 30: 60_000*30/60
        (rate(60_000, 30, 6), 31, 36_000),  # billed 36: 60_000*36/60
        (rate(60_000, 30, 6), 36, 36_000),  # boundary: billed 36
        (rate(60_000, 30, 6), 37, 42_000),  # billed 42
        (rate(60_000, 30, 6), 125, 126_000),  # billed 126
        # 1/1 at 0.0125/min = 12_500 micro/min: shows the single rounding up
        (rate(12_500, 1, 1), 1, 209),  # ceil(12_500*1/60) = ceil(208.33)
        (rate(12_500, 1, 1), 7, 1_459),  # ceil(87_500/60) = ceil(1458.33)
        (rate(12_500, 1, 1), 60, 12_500),  # 750_000/60 exactly
        # 60/1 at 0.10/min
        (rate(100_000, 60, 1), 30, 100_000),  # billed 60
        (rate(100_000, 60, 1), 61, 101_667),  # billed 61: ceil(6_100_000/60) = ceil(101_666.67)
        (rate(100_000, 60, 1), 90, 150_000),  # billed 90: 9_000_000/60
        # 45/10 at 0.12/min = 120_000 micro/min (2_000 micro/s)
        (rate(120_000, 45, 10), 45, 90_000),  # billed 45: 120_000*45/60
        (rate(120_000, 45, 10), 46, 110_000),  # billed 55
        (rate(120_000, 45, 10), 55, 110_000),  # boundary: billed 55
        (rate(120_000, 45, 10), 56, 130_000),  # billed 65
        (rate(120_000, 45, 10), 100, 210_000),  # billed 105
        # connect fee 0.05 with 60/60 at 0.10/min
        (rate(100_000, 60, 60, fee=50_000), 0, 0),  # unanswered: no connect fee either
        (rate(100_000, 60, 60, fee=50_000), 1, 150_000),  # 50_000 + 100_000
        (rate(100_000, 60, 60, fee=50_000), 61, 250_000),  # 50_000 + 200_000
        # sub-cent 0.0123/min = 12_300 micro/min
        (rate(12_300, 60, 60), 1, 12_300),  # billed 60: 12_300*60/60
        (rate(12_300, 60, 60), 61, 24_600),  # billed 120
        (rate(12_300, 1, 1), 1, 205),  # 12_300/60 = 205 exactly
        (rate(12_300, 1, 1), 59, 12_095),  # 725_700/60 = 12_095
        (rate(12_300, 6, 6), 7, 2_460),  # billed 12: 147_600/60
        # 0.0001/min = 100 micro/min, 1/1: one rounding per call, not per second
        (rate(100, 1, 1), 1, 2),  # ceil(100/60) = ceil(1.67)
        (rate(100, 1, 1), 60, 100),  # 6_000/60, not 60 * 2
        # free destination
        (rate(0, 60, 60), 3_600, 0),
        (rate(0, 60, 60, fee=10_000), 3_600, 10_000),
    ],
)
def test_cost_by_hand(r: Rate, d: int, expected: int) -> None:
    assert cost(r, d) == expected
    assert reserve_amount(r, d) == expected


# --- max duration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "available", "expected"),
    [
        # 60/60 at 0.10/min: k = (60*250_000 - 100_000*60) // (100_000*60) = 9e6 // 6e6 = 1 -> 60 + 60
        (rate(100_000, 60, 60), 250_000, 120),
        (rate(100_000, 60, 60), 200_000, 120),  # exactly two minutes: k = 6e6 // 6e6 = 1
        (rate(100_000, 60, 60), 199_999, 60),  # one micro short of the second minute
        # 30/6 at 0.06/min: k = (6_000_000 - 1_800_000) // 360_000 = 11 -> 30 + 66
        (rate(60_000, 30, 6), 100_000, 96),
        (rate(60_000, 30, 6), 30_000, 30),  # affords exactly the first increment: 60_000*30/60
        (rate(60_000, 30, 6), 29_999, 0),  # first increment unaffordable: refuse
        # 1/1 at 0.0125/min: k = (60_000 - 12_500) // 12_500 = 3 -> 1 + 3; cost(4) = 834, cost(5) = 1_042
        (rate(12_500, 1, 1), 1_000, 4),
        (rate(12_500, 1, 1), 209, 1),  # exactly the first second: ceil(12_500/60) = 209
        (rate(12_500, 1, 1), 208, 0),
        # 60/1 at 0.10/min: k = (9_000_000 - 6_000_000) // 100_000 = 30 -> 60 + 30; cost(90) = 150_000
        (rate(100_000, 60, 1), 150_000, 90),
        (rate(100_000, 60, 1), 100_000, 60),  # exactly the first increment
        # 45/10 at 0.12/min: k = (12_000_000 - 5_400_000) // 1_200_000 = 5 -> 45 + 50
        (rate(120_000, 45, 10), 200_000, 95),
        (rate(120_000, 45, 10), 90_000, 45),  # exactly the first increment (45 s, not a multiple of 10)
        (rate(120_000, 45, 10), 89_999, 0),
        # connect fee 0.05 + 0.10/min at 60/60: cost(60) = 150_000, cost(120) = 250_000
        (rate(100_000, 60, 60, fee=50_000), 149_999, 0),
        (rate(100_000, 60, 60, fee=50_000), 150_000, 60),
        (rate(100_000, 60, 60, fee=50_000), 249_999, 60),
        (rate(100_000, 60, 60, fee=50_000), 250_000, 120),
        (rate(100_000, 60, 60, fee=50_000), 49_999, 0),  # not even the connect fee
        # sub-cent 0.0123/min at 60/60 with 0.05: k = (3_000_000 - 738_000) // 738_000 = 3 -> 240
        (rate(12_300, 60, 60), 50_000, 240),  # cost(240) = 49_200, cost(241) = 61_500
        # the cap: 1_000.00 at 0.10/min would last 600_000 s
        (rate(100_000, 60, 60), 1_000 * U, DEFAULT_MAX_CALL_DURATION_S),
        # free destination: any amount that covers the (zero) connect fee gets the cap
        (rate(0, 60, 60), 0, DEFAULT_MAX_CALL_DURATION_S),
        (rate(0, 60, 60, fee=10_000), 10_000, DEFAULT_MAX_CALL_DURATION_S),
        (rate(0, 60, 60, fee=10_000), 9_999, 0),
        # an empty or overdrawn wallet
        (rate(100_000, 60, 60), 0, 0),
        (rate(100_000, 60, 60), -5, 0),
    ],
)
def test_max_duration_by_hand(r: Rate, available: int, expected: int) -> None:
    d = max_duration(r, available)
    assert d == expected
    if d:
        assert cost(r, d) <= available


def test_max_duration_cap_argument() -> None:
    r = rate(100_000, 60, 60)
    assert max_duration(r, 1_000 * U, cap=300) == 300
    # A cap shorter than the first increment still applies; the call is billed X if it lasts that long.
    assert max_duration(r, 1_000 * U, cap=30) == 30
    with pytest.raises(ValidationError):
        max_duration(r, U, cap=0)


# --- properties --------------------------------------------------------------------------------------------

rates_st = st.builds(
    Rate,
    prefix=st.just("1"),
    destination=st.just("Anywhere"),
    rate_per_minute=st.one_of(st.just(0), st.integers(1, 100), st.integers(0, 20 * U)),
    connect_fee=st.one_of(st.just(0), st.integers(0, U)),
    first_increment_s=st.one_of(st.sampled_from([1, 6, 30, 45, 60]), st.integers(1, 600)),
    next_increment_s=st.one_of(st.sampled_from([1, 6, 10, 30, 60]), st.integers(1, 600)),
    effective_from=st.none(),
)


@given(r=rates_st, available=st.integers(-U, 1_000 * U), cap=st.integers(1, 86_400))
def test_max_duration_is_the_end_of_the_last_affordable_increment(r: Rate, available: int, cap: int) -> None:
    d = max_duration(r, available, cap)
    x, y = r.first_increment_s, r.next_increment_s
    assert 0 <= d <= cap
    assert (d == 0) == (cost(r, x) > available)
    if d == 0:
        return
    assert cost(r, d) <= available
    if d < cap:
        assert available < cost(r, d + y)
        # The end of an increment: one more second starts the next, unaffordable one.
        assert available < cost(r, d + 1)
        assert d == x or (d - x) % y == 0


@given(
    rpm=st.integers(0, 200_000),
    fee=st.integers(0, 20_000),
    x=st.integers(1, 20),
    y=st.integers(1, 20),
    available=st.integers(0, 60_000),
)
def test_max_duration_matches_brute_force(rpm: int, fee: int, x: int, y: int, available: int) -> None:
    r = rate(rpm, x, y, fee=fee)
    cap = 400
    affordable = [d for d in range(1, cap + 1) if cost(r, d) <= available]
    assert max_duration(r, available, cap) == (max(affordable) if affordable else 0)


@given(r=rates_st, d=st.integers(0, 100_000), extra=st.integers(0, 1_000))
def test_billed_seconds_and_cost_are_monotone_and_tight(r: Rate, d: int, extra: int) -> None:
    x, y = r.first_increment_s, r.next_increment_s
    billed = billed_seconds(d, x, y)
    if d == 0:
        assert billed == 0
    elif d <= x:
        assert billed == x
    else:
        assert d <= billed < d + y
        assert (billed - x) % y == 0
    assert cost(r, d) <= cost(r, d + extra)
    if d:
        # One rounding per call: never more than one micro-unit above the exact price.
        assert 0 <= cost(r, d) * 60 - (r.connect_fee * 60 + r.rate_per_minute * billed) < 60


# --- Rate validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "4a"},
        {"prefix": ""},
        {"prefix": "+44"},
        {"prefix": "1" * 21},
        {"destination": ""},
        {"destination": " UK"},
        {"destination": "UK\n"},
        {"rate_per_minute": -1},
        {"rate_per_minute": 1.5},
        {"rate_per_minute": True},
        {"connect_fee": -1},
        {"first_increment_s": 0},
        {"next_increment_s": 0},
        {"next_increment_s": 86_401},
        {"effective_from": datetime(2027, 1, 1)},
        {"effective_from": "2027-01-01"},
    ],
)
def test_rate_refuses_bad_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "prefix": "44",
        "destination": "UK",
        "rate_per_minute": 1,
        "connect_fee": 0,
        "first_increment_s": 60,
        "next_increment_s": 60,
        "effective_from": None,
    }
    fields.update(kwargs)
    with pytest.raises(ValidationError):
        Rate(**fields)  # type: ignore[arg-type]


# --- number normalisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("+14155550100", "14155550100"),
        ("0044207946000", "44207946000"),
        ("011442079460000", "442079460000"),
        ("6561234567", "6561234567"),
        ("1", "1"),
        ("+" + "9" * 20, "9" * 20),
    ],
)
def test_normalise_number(raw: str, digits: str) -> None:
    assert normalise_number(raw) == digits


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "+",
        "00",
        "011",
        "+1415555O100",  # letter O
        "1-415-555-0100",
        "+44 20 7946 0000",
        " 4420",
        "++44",
        "+" + "9" * 21,  # 21 digits
        "9" * 21,
        "\u0663\u0663",  # Arabic-Indic digits: str.isdigit() is true, but not ASCII
        "44\n",
    ],
)
def test_normalise_number_refuses(raw: str) -> None:
    with pytest.raises(ValidationError) as err:
        normalise_number(raw, field="callee")
    assert err.value.extra["field"] == "callee"


def test_normalise_number_refuses_non_strings() -> None:
    with pytest.raises(ValidationError):
        normalise_number(14155550100)  # type: ignore[arg-type]


# --- prefix table ------------------------------------------------------------------------------------------

TODAY = date(2026, 11, 22)
PLAN = [
    Rate("1", "USA/Canada", 10_000, 0, 6, 6, None),
    Rate("44", "UK", 20_000, 0, 60, 60, None),
    Rate("447", "UK mobile", 100_000, 0, 60, 60, None),
    Rate("447", "UK mobile", 80_000, 0, 60, 60, date(2026, 12, 1)),  # a price cut next month
    Rate("4477", "UK mobile (new range)", 50_000, 0, 1, 1, date(2027, 1, 1)),  # exists only from 2027
    Rate("65", "Singapore", 15_000, 0, 1, 1, date(2020, 1, 1)),
]


@pytest.mark.parametrize(
    ("number", "on", "prefix", "rpm"),
    [
        ("14155550100", TODAY, "1", 10_000),
        ("442079460000", TODAY, "44", 20_000),  # only "44" matches
        ("447700900123", TODAY, "447", 100_000),  # "4477" is not in force yet: falls back to "447"
        ("447700900123", date(2026, 11, 30), "447", 100_000),  # the day before the price cut
        ("447700900123", date(2026, 12, 1), "447", 80_000),  # the day of the price cut
        ("447700900123", date(2027, 1, 1), "4477", 50_000),  # the longer prefix now exists
        ("447800900123", date(2027, 1, 1), "447", 80_000),  # 4478 is not 4477
        ("6561234567", TODAY, "65", 15_000),
        ("44", TODAY, "44", 20_000),  # the number is the prefix
        ("4", TODAY, None, None),  # shorter than every matching prefix
        ("33123456789", TODAY, None, None),
        ("6561234567", date(2019, 12, 31), None, None),  # before Singapore's only rate began
    ],
)
def test_longest_prefix_match_with_effective_dates(number: str, on: date, prefix: str | None, rpm: int | None) -> None:
    table = PrefixTable(PLAN)
    found = table.lookup(number, on)
    if prefix is None:
        assert found is None
    else:
        assert found is not None
        assert (found.prefix, found.rate_per_minute) == (prefix, rpm)


def test_prefix_table_refuses_duplicates_and_lists_rates() -> None:
    with pytest.raises(ValidationError):
        PrefixTable([*PLAN, Rate("447", "Again", 1, 0, 1, 1, date(2026, 12, 1))])
    with pytest.raises(ValidationError):
        PrefixTable([*PLAN, Rate("44", "Again", 1, 0, 1, 1, None)])
    table = PrefixTable(PLAN)
    assert len(table) == len(PLAN)
    assert table.max_prefix_len == 4
    assert [(r.prefix, r.effective_from) for r in table.rates()] == sorted(
        ((r.prefix, r.effective_from) for r in PLAN), key=lambda p: (p[0], p[1] or date.min)
    )


def test_empty_prefix_table_matches_nothing() -> None:
    table = PrefixTable([])
    assert table.lookup("14155550100", TODAY) is None
    assert table.lookup("", TODAY) is None
    assert len(table) == 0


prefix_st = st.text(alphabet="0123", min_size=1, max_size=5)
plan_st = st.lists(
    st.tuples(prefix_st, st.one_of(st.none(), st.dates(date(2026, 1, 1), date(2027, 12, 31)))),
    max_size=40,
    unique=True,
)


@given(
    plan=plan_st,
    number=st.text(alphabet="0123", min_size=0, max_size=8),
    on=st.dates(date(2025, 6, 1), date(2028, 6, 1)),
)
def test_lookup_matches_a_naive_scan(plan: list[tuple[str, date | None]], number: str, on: date) -> None:
    rates = [Rate(p, f"d{i}", i, 0, 1, 1, eff) for i, (p, eff) in enumerate(plan)]
    in_force = [r for r in rates if number.startswith(r.prefix) and (r.effective_from or date.min) <= on]
    expected = max(in_force, key=lambda r: (len(r.prefix), r.effective_from or date.min), default=None)
    assert PrefixTable(rates).lookup(number, on) == expected
