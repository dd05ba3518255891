"""Rate plan CSV: every bad row reported with its line number, nothing returned then, progress, round trip."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits.errors import ValidationError
from credits.rating.csv_io import HEADER, RateCsvError, export_rates, parse_rates
from credits.rating.engine import Rate

HEAD = ",".join(HEADER)


def csv_text(*rows: str) -> str:
    return "\n".join((HEAD, *rows)) + "\n"


def test_parses_a_good_plan() -> None:
    text = csv_text(
        "1,USA/Canada,0.0123,0,6,6,",  # sub-cent: 0.0123 * 1_000_000 = 12_300 micro
        '44,"UK, fixed",0.02,0.05,60,60,',  # a quoted comma; connect fee 0.05 = 50_000 micro
        "447,UK mobile,0.10,0,60,60,2027-01-01",
        "447,UK mobile,0.12,0,30,6,",  # same prefix, another effective_from: allowed
        "",  # a blank line is skipped
        " 65 , Singapore , 0.000001 , 0.00 , 1 , 1 , 2026-12-01 ",  # spaces around fields are tolerated
    )
    assert parse_rates(text, "USD") == [
        Rate("1", "USA/Canada", 12_300, 0, 6, 6, None),
        Rate("44", "UK, fixed", 20_000, 50_000, 60, 60, None),
        Rate("447", "UK mobile", 100_000, 0, 60, 60, date(2027, 1, 1)),
        Rate("447", "UK mobile", 120_000, 0, 30, 6, None),
        Rate("65", "Singapore", 1, 0, 1, 1, date(2026, 12, 1)),
    ]


def test_accepts_files_crlf_and_a_byte_order_mark(tmp_path: Path) -> None:
    text = "\ufeff" + HEAD + "\r\n" + "44,UK,0.02,0,60,60,\r\n"
    expected = [Rate("44", "UK", 20_000, 0, 60, 60, None)]
    assert parse_rates(text, "USD") == expected
    assert parse_rates(io.StringIO(text, newline=""), "USD") == expected
    path = tmp_path / "plan.csv"
    path.write_text(text, encoding="utf-8")
    with path.open(encoding="utf-8-sig", newline="") as f:
        assert parse_rates(f, "USD") == expected


def test_reports_every_bad_row_with_its_line_number_and_returns_nothing() -> None:
    text = csv_text(
        "44,UK,0.02,0,60,60,",  # line 2: good
        "4a,Bad prefix,0.02,0,60,60,",  # line 3
        "45,Negative rate,-0.01,0,60,60,",  # line 4
        "46,Zero increment,0.02,0,60,0,",  # line 5
        "44,UK again,0.03,0,60,60,",  # line 6: duplicate of line 2 (both without effective_from)
        "47,Missing column,0.02,0,60,60",  # line 7
        "48,Extra column,0.02,0,60,60,,x",  # line 8
        "49,Bad date,0.02,0,60,60,2027-02-30",  # line 9
        "50,Bad decimal,0.0.2,0,60,60,",  # line 10
        "51,Too precise,0.0000001,0,60,60,",  # line 11: 7 decimals
        "52,,0.02,0,60,60,",  # line 12: empty destination
        "53,Good,0.02,0,60,60,2027-01-01",  # line 13: good
        "53,Duplicate dated,0.02,0,60,60,2027-01-01",  # line 14: duplicate of line 13
        "+54,Plus prefix,0.02,0,60,60,",  # line 15
        "55,Negative fee,0.02,-1,60,60,",  # line 16
        "56,Fractional increment,0.02,0,1.5,60,",  # line 17
        "57,Two problems,abc,0,0,60,",  # line 18: one entry, both problems
        "58,Date format,0.02,0,60,60,20270101",  # line 19
    )
    with pytest.raises(RateCsvError) as err:
        parse_rates(text, "USD")
    errors = {e.line: " ".join(e.problems) for e in err.value.errors}
    assert sorted(errors) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19]
    assert "prefix '4a' must be digits only" in errors[3]
    assert "rate_per_minute must not be negative" in errors[4]
    assert "next_increment_s must be between 1 and" in errors[5]
    assert "duplicate of line 2" in errors[6]
    assert "expected 7 columns, found 6" in errors[7]
    assert "expected 7 columns, found 8" in errors[8]
    assert "effective_from '2027-02-30' is not a date" in errors[9]
    assert "rate_per_minute '0.0.2' is not a decimal amount" in errors[10]
    assert "rate_per_minute '0.0000001' is not a decimal amount" in errors[11]
    assert "destination must not be empty" in errors[12]
    assert "duplicate of line 13" in errors[14] and "2027-01-01" in errors[14]
    assert "prefix '+54' must be digits only" in errors[15]
    assert "connect_fee must not be negative" in errors[16]
    assert "first_increment_s '1.5' is not a whole number" in errors[17]
    assert len(err.value.errors[-2].problems) == 2  # line 18: bad rate and zero increment
    assert "effective_from '20270101' is not a date" in errors[19]
    message = str(err.value)
    assert message.startswith("16 bad rows")
    assert "line 3: prefix '4a'" in message and "line 19: " in message
    assert isinstance(err.value, ValidationError) and err.value.status == 400


def test_line_numbers_count_blank_lines_and_multi_line_fields() -> None:
    text = csv_text(
        "",  # line 2
        '44,"UK',  # lines 3-4: a quoted destination with a newline is one record, starting on line 3
        'fixed",0.02,0,60,60,',
        "x,Bad,0.02,0,60,60,",  # line 5
    )
    with pytest.raises(RateCsvError) as err:
        parse_rates(text, "USD")
    assert [e.line for e in err.value.errors] == [3, 5]  # line 3: a control character in the destination


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "prefix,destination,rate,connect_fee,first_increment_s,next_increment_s,effective_from\n1,US,1,0,1,1,\n",
        "prefix,destination,rate_per_minute,connect_fee,first_increment_s,next_increment_s\n1,US,1,0,1,1\n",
        "1,US,0.01,0,60,60,\n",  # no header at all
    ],
)
def test_a_bad_or_missing_header_is_line_1(text: str) -> None:
    with pytest.raises(RateCsvError) as err:
        parse_rates(text, "USD")
    assert [e.line for e in err.value.errors] == [1]


def test_a_broken_quote_is_reported() -> None:
    text = csv_text("44,UK,0.02,0,60,60,", '45,"Broken,0.02,0,60,60,')
    with pytest.raises(RateCsvError) as err:
        parse_rates(text, "USD")
    assert [e.line for e in err.value.errors] == [3]
    assert "unreadable CSV" in str(err.value)


def test_header_only_is_an_empty_plan() -> None:
    assert parse_rates(HEAD + "\n", "USD") == []


def test_unknown_currency_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse_rates(csv_text("44,UK,0.02,0,60,60,"), "XYZ")
    with pytest.raises(ValidationError):
        export_rates([], "XYZ")


@pytest.mark.parametrize(
    ("rows", "every", "calls"),
    [
        (2500, 1000, [(1000, 2500), (2000, 2500), (2500, 2500)]),
        (2000, 1000, [(1000, 2000), (2000, 2000)]),
        (3, 1000, [(3, 3)]),
        (0, 1000, [(0, 0)]),
    ],
)
def test_progress_is_reported_every_n_rows_and_at_the_end(rows: int, every: int, calls: list[tuple[int, int]]) -> None:
    text = csv_text(*(f"{1000 + i},Dest {i},0.01,0,60,60," for i in range(rows)))
    seen: list[tuple[int, int]] = []
    rates = parse_rates(text, "USD", progress=lambda done, total: seen.append((done, total)), progress_every=every)
    assert len(rates) == rows
    assert seen == calls


def test_progress_ends_complete_when_the_file_fails() -> None:
    text = csv_text("44,UK,0.02,0,60,60,", "x,Bad,0.02,0,60,60,", "45,Fine,0.02,0,60,60,")
    seen: list[tuple[int, int]] = []
    with pytest.raises(RateCsvError):
        parse_rates(text, "USD", progress=lambda done, total: seen.append((done, total)), progress_every=2)
    assert seen == [(2, 3), (3, 3)]


def test_export_uses_the_shortest_exact_amounts() -> None:
    rates = [
        Rate("447", "UK mobile", 100_000, 0, 60, 60, date(2027, 1, 1)),
        Rate("1", "USA, Canada", 12_300, 1, 6, 6, None),
        Rate("447", "UK mobile", 120_000, 50_000, 30, 6, None),
    ]
    assert export_rates(rates, "USD") == (
        HEAD + "\n"
        '1,"USA, Canada",0.0123,0.000001,6,6,\n'
        "447,UK mobile,0.12,0.05,30,6,\n"
        "447,UK mobile,0.10,0.00,60,60,2027-01-01\n"
    )
    assert (
        export_rates([Rate("81", "Japan", 5_000_000, 500_000, 1, 1, None)], "JPY") == HEAD + "\n81,Japan,5,0.5,1,1,\n"
    )
    assert export_rates([Rate("973", "Bahrain", 12_300, 0, 1, 1, None)], "BHD").endswith(",0.0123,0.000,1,1,\n")


def _key(r: Rate) -> tuple[str, date]:
    return (r.prefix, r.effective_from or date.min)


rate_st = st.builds(
    Rate,
    prefix=st.text(alphabet="0123456789", min_size=1, max_size=20),
    destination=st.text(min_size=1, max_size=40).map(str.strip).filter(lambda s: bool(s) and s.isprintable()),
    rate_per_minute=st.integers(0, 1_000_000_000_000),
    connect_fee=st.integers(0, 10_000_000),
    first_increment_s=st.integers(1, 86_400),
    next_increment_s=st.integers(1, 86_400),
    effective_from=st.one_of(st.none(), st.dates(date(2000, 1, 1), date(2100, 12, 31))),
)


@given(
    rates=st.lists(rate_st, max_size=30, unique_by=_key),
    currency=st.sampled_from(["USD", "JPY", "BHD"]),
)
def test_export_round_trips_through_parse(rates: list[Rate], currency: str) -> None:
    text = export_rates(rates, currency)
    assert parse_rates(text, currency) == sorted(rates, key=_key)
