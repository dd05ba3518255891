"""Call records (traffic data): what is stored, the rate snapshot, history with keyset pagination and a date
range, the CSV export, and batch CDRs (one answer per item, in order)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from credits.calls import service as calls
from credits.errors import NotFound, ValidationError
from credits.ledger import service as ledger
from credits.rating import service as rating
from credits.rating.engine import Rate
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    DEFAULT_RATES,
    NO_RATE_CALLEE,
    SG_CALLEE,
    UK_CALLEE,
    US_CALLEE,
    USD,
    assert_audit_clean,
    call_row,
    callers_fixture,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
)


def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body: dict[str, Any] = resp.get_json()
    return body


# ---------------------------------------------------------------- what is stored


def test_call_record_holds_the_traffic_data(switch, callers, clock):
    caller = callers(credit=10 * USD)
    authorized_at = clock.now()
    ok(switch.authorize("c-1", caller.phone, "006561234567"))  # stored as E.164
    clock.advance(seconds=140)
    ok(switch.complete("c-1", 125, answered_at="2026-11-22T20:00:10+08:00", ended_at="2026-11-22T12:02:15Z",
                       end_reason="bye"))
    row = call_row("c-1")
    assert (row.caller, row.callee, row.source, row.status) == (caller.phone, SG_CALLEE, "switch", "completed")
    assert (row.authorized_at, row.answered_at, row.ended_at, row.completed_at) == (
        authorized_at, datetime(2026, 11, 22, 12, 0, 10, tzinfo=UTC), datetime(2026, 11, 22, 12, 2, 15, tzinfo=UTC),
        authorized_at + timedelta(seconds=140))
    assert (row.duration_s, row.billed_s, row.cost, row.charged, row.disposition, row.end_reason) == (
        125, 126, 25_830, 25_830, "answered", "bye")
    assert (row.rate_prefix, row.rate_destination, row.rate_per_minute, row.connect_fee, row.first_increment_s,
            row.next_increment_s) == ("65", "Singapore", 12_300, 0, 60, 6)
    assert (row.max_duration_s, row.reserved, row.flagged) == (7200, 1_476_000, False)


def test_times_left_out_are_derived_from_the_report(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=130)
    ok(switch.complete("c-1", 125))
    row = call_row("c-1")
    assert (row.ended_at, row.answered_at) == (clock.now(), clock.now() - timedelta(seconds=125))
    ok(switch.authorize("c-2", caller.phone, SG_CALLEE))
    ok(switch.complete("c-2", 0, "busy"))
    assert call_row("c-2").answered_at is None


def test_the_rate_snapshot_outlives_a_plan_change(switch, callers):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-old", caller.phone, SG_CALLEE))
    dearer = [r if r.prefix != "65" else Rate("65", "Singapore (new)", 50_000, 10_000, 1, 1) for r in DEFAULT_RATES]
    assert rating.import_plan("default", dearer, "USD").version == 2
    # The call authorised under the old plan is charged as it was rated: 0.0123/min, 60/6.
    assert ok(switch.complete("c-old", 125))["charged"] == "0.025830"
    # A new call gets the new price at once (the prefix table cache follows the plan version).
    body = ok(switch.authorize("c-new", caller.phone, SG_CALLEE))
    assert (body["rate"]["destination"], body["rate"]["rate_per_minute"], body["rate"]["connect_fee"]) == (
        "Singapore (new)", "0.050000", "0.010000")
    # 0.01 + ceil(50_000 * 125 / 60) = 10_000 + 104_167.
    assert ok(switch.complete("c-new", 125))["charged"] == "0.114167"
    assert call_row("c-old").rate_per_minute == 12_300
    assert call_row("c-new").rate_per_minute == 50_000
    # The stored record is history: it does not follow the plan either.
    [new, old] = calls.call_history(caller.wallet_id).records
    assert (old.destination, old.rate_per_minute, old.cost) == ("Singapore", 12_300, 25_830)
    assert_audit_clean()


# ---------------------------------------------------------------- history


def make_history(switch: Any, caller: Any, clock: Any, n: int) -> list[str]:
    """n calls, one an hour from 12:00, alternately answered (125 s) and busy; returns call ids oldest first."""
    ids = []
    for i in range(n):
        call_id = f"c-{i:02d}"
        ok(switch.authorize(call_id, caller.phone, SG_CALLEE if i % 3 else US_CALLEE))
        ok(switch.complete(call_id, 125) if i % 2 == 0 else switch.complete(call_id, 0, "busy"))
        ids.append(call_id)
        clock.advance(hours=1)
    return ids


def test_history_is_newest_first_with_keyset_pagination(switch, callers, clock):
    caller = callers(credit=10 * USD)
    other = callers(credit=10 * USD)
    ids = make_history(switch, caller, clock, 7)
    ok(switch.authorize("someone-else", other.phone, SG_CALLEE))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = calls.call_history(caller.wallet_id, after=cursor, limit=3)
        pages += 1
        assert len(page.records) <= 3 and page.currency == "USD"
        seen += [r.call_id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))
    # A call added meanwhile does not shift the pages already read: the cursor is a key, not an offset.
    first = calls.call_history(caller.wallet_id, limit=3)
    ok(switch.authorize("c-late", caller.phone, SG_CALLEE))
    second = calls.call_history(caller.wallet_id, after=first.next_cursor, limit=3)
    assert [r.call_id for r in second.records] == list(reversed(ids))[3:6]
    page = calls.call_history(caller.wallet_id, limit=1)
    record = page.records[0]
    assert (record.call_id, record.status, record.charged, record.destination) == (
        "c-late", "authorized", None, "Singapore")


def test_history_date_range_is_start_inclusive_end_exclusive(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ids = make_history(switch, caller, clock, 6)  # 12:00, 13:00, ... 17:00
    start = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    end = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)
    page = calls.call_history(caller.wallet_id, start=start, end=end)
    assert [r.call_id for r in page.records] == [ids[3], ids[2], ids[1]]
    assert [r.call_id for r in calls.call_history(caller.wallet_id, start=end).records] == [ids[5], ids[4]]
    assert [r.call_id for r in calls.call_history(caller.wallet_id, end=start).records] == [ids[0]]
    paged = calls.call_history(caller.wallet_id, start=start, end=end, limit=2)
    rest = calls.call_history(caller.wallet_id, start=start, end=end, limit=2, after=paged.next_cursor)
    assert [r.call_id for r in paged.records + rest.records] == [ids[3], ids[2], ids[1]]
    assert rest.next_cursor is None


@pytest.mark.parametrize("kwargs", [
    {"limit": 0}, {"limit": 1001}, {"limit": True}, {"after": "abc"}, {"after": "²"}, {"after": "-1"},
    {"after": "9" * 19}, {"start": datetime(2026, 11, 22, 12, 0)},  # noqa: DTZ001 - naive on purpose
    {"end": datetime(2026, 11, 22, 12, 0)},  # noqa: DTZ001
    {"start": datetime(2026, 11, 23, tzinfo=UTC), "end": datetime(2026, 11, 22, tzinfo=UTC)},
], ids=["limit-0", "limit-1001", "limit-bool", "cursor-letters", "cursor-superscript", "cursor-negative",
        "cursor-overflow", "naive-start", "naive-end", "backwards"])
def test_history_refuses_bad_arguments(switch, callers, clock, kwargs):
    caller = callers(credit=10 * USD)
    make_history(switch, caller, clock, 2)
    with pytest.raises(ValidationError):
        calls.call_history(caller.wallet_id, **kwargs)


def test_calls_csv_checks_its_range_before_the_first_line(switch, callers):
    caller = callers(credit=10 * USD)
    with pytest.raises(ValidationError):
        calls.calls_csv(caller.wallet_id, start=datetime(2026, 11, 22, 12, 0))  # noqa: DTZ001 - naive on purpose


def test_history_of_an_unknown_wallet(app):
    with pytest.raises(NotFound):
        calls.call_history(999_999)
    with pytest.raises(NotFound):
        calls.calls_csv(999_999)


def test_calls_csv_has_a_header_and_one_row_per_call_in_the_range(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ids = make_history(switch, caller, clock, 4)
    start = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    text = "".join(calls.calls_csv(caller.wallet_id, start=start))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == calls.CSV_HEADER
    assert [r[0] for r in rows[1:]] == [ids[3], ids[2], ids[1]]
    by_id = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    answered = by_id[ids[2]]  # 14:00, answered 125 s to Singapore
    assert answered == {
        "call_id": ids[2], "authorized_at": "2026-11-22T14:00:00Z", "answered_at": "2026-11-22T13:57:55Z",
        "ended_at": "2026-11-22T14:00:00Z", "caller": caller.phone, "callee": SG_CALLEE,
        "destination": "Singapore", "status": "completed", "disposition": "answered", "duration_s": "125",
        "billed_s": "126", "rate_per_minute": "0.012300", "cost": "0.025830", "charged": "0.025830",
        "currency": "USD"}
    busy = by_id[ids[3]]  # 15:00, busy, rated 1 (US)
    assert (busy["disposition"], busy["cost"], busy["charged"], busy["answered_at"], busy["destination"]) == (
        "busy", "0.000000", "0.000000", "", "United States")
    assert "".join(calls.calls_csv(caller.wallet_id, start=datetime(2027, 1, 1, tzinfo=UTC))) == (
        ",".join(calls.CSV_HEADER) + "\n")


def test_calls_csv_neutralises_spreadsheet_formulas(switch, callers):
    rating.import_plan("default", [*DEFAULT_RATES, Rate("81", "=HYPERLINK(\"http://x\")", 10_000, 0, 60, 60)],
                       "USD")
    caller = callers(credit=10 * USD)
    ok(switch.authorize("@cmd", caller.phone, NO_RATE_CALLEE))
    [header, row] = list(csv.reader(io.StringIO("".join(calls.calls_csv(caller.wallet_id)))))
    record = dict(zip(header, row, strict=True))
    assert record["destination"] == "'=HYPERLINK(\"http://x\")"
    assert record["call_id"] == "'@cmd"
    assert record["caller"] == caller.phone  # a phone number is a number, left as it is


def test_calls_csv_reads_every_page(switch, callers):
    caller = callers(credit=1000 * USD)
    items = [{"call_id": f"cdr-{i:04d}", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 30,
              "answered_at": "2026-11-22T11:00:00Z"} for i in range(1000)]
    assert {r["status"] for r in ok(switch.cdrs(items))["results"]} == {"charged"}
    items = [{**item, "call_id": item["call_id"].replace("cdr-", "cdr2-")} for item in items[:5]]
    ok(switch.cdrs(items))
    lines = list(calls.calls_csv(caller.wallet_id))
    assert len(lines) == 1 + 1005
    assert len({line.split(",")[0] for line in lines[1:]}) == 1005


# ---------------------------------------------------------------- batch CDRs


def cdr(call_id: str, caller: str, duration: Any = 125, **extra: Any) -> dict[str, Any]:
    return {"call_id": call_id, "caller": caller, "callee": SG_CALLEE, "duration_s": duration,
            "answered_at": "2026-11-22T11:00:00Z", "disposition": "answered", **extra}


def test_batch_cdrs_answer_each_item_in_order(switch, callers):
    caller = callers(credit=10 * USD)
    other = callers(credit=1 * USD)
    ok(switch.authorize("authorized-1", caller.phone, SG_CALLEE))
    items = [
        cdr("cdr-1", caller.phone),  # 125 s -> 0.025830
        cdr("cdr-2", caller.phone, 1.5),  # not an integer
        cdr("cdr-1", caller.phone),  # the same call twice in one batch
        cdr("cdr-3", "+6599999999"),  # nobody's number
        {**cdr("cdr-4", caller.phone), "callee": NO_RATE_CALLEE},
        cdr("cdr-5", caller.phone, 0, disposition="no_answer"),  # counted, charges nothing
        cdr("authorized-1", caller.phone),  # a call the switch authorised: not charged twice
        "not an object",
        cdr("cdr-6", caller.phone, 86401),
        {**cdr("cdr-7", caller.phone), "extra": 1},
        {k: v for k, v in cdr("cdr-8", caller.phone).items() if k != "answered_at"},
        {**cdr("cdr-9", caller.phone), "callee": "+65ABC"},
        cdr("x" * 129, caller.phone),
        {**cdr("cdr-10", caller.phone), "answered_at": "2026-11-22T11:00:00"},
        {**cdr("cdr-11", "+6599999999"), "account": other.number, "callee": UK_CALLEE, "duration_s": 60},
        {k: v for k, v in cdr("cdr-12", "").items() if k != "caller"} | {"account": other.number},
        cdr("cdr-13", caller.phone, True),
        {**cdr("cdr-14", caller.phone), "disposition": "hung_up"},
    ]
    results = ok(switch.cdrs(items))["results"]
    assert [(r["call_id"], r["status"], r["charged"]) for r in results] == [
        ("cdr-1", "charged", "0.025830"),
        ("cdr-2", "rejected", "0.000000"),
        ("cdr-1", "duplicate", "0.000000"),
        ("cdr-3", "rejected", "0.000000"),
        ("cdr-4", "rejected", "0.000000"),
        ("cdr-5", "charged", "0.000000"),
        ("authorized-1", "duplicate", "0.000000"),
        (None, "rejected", "0.000000"),
        ("cdr-6", "rejected", "0.000000"),
        ("cdr-7", "rejected", "0.000000"),
        ("cdr-8", "rejected", "0.000000"),
        ("cdr-9", "rejected", "0.000000"),
        ("x" * 129, "rejected", "0.000000"),
        ("cdr-10", "rejected", "0.000000"),
        ("cdr-11", "charged", "0.100000"),  # the account wins: UK 60 s = 0.05 + 0.05
        ("cdr-12", "charged", "0.025830"),
        ("cdr-13", "rejected", "0.000000"),
        ("cdr-14", "rejected", "0.000000"),
    ]
    errors = [r["error"] for r in results]
    assert errors[0] is None and errors[2] is None
    assert (errors[3], errors[4]) == ("unknown_caller", "no_rate")
    assert all(e for i, e in enumerate(errors) if results[i]["status"] == "rejected")
    assert caller.wallet().balance == 10 * USD - 25_830
    assert caller.wallet().held == 1_476_000  # the authorised call's hold is untouched
    assert other.wallet().balance == 1 * USD - 100_000 - 25_830
    row = call_row("cdr-1")
    assert (row.source, row.status, row.hold_id, row.answered_at, row.ended_at, row.billed_s) == (
        "cdr", "completed", None, datetime(2026, 11, 22, 11, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 11, 2, 5, tzinfo=UTC), 126)
    assert call_row("cdr-12").caller == ""
    # Sent again, the good ones are duplicates and nothing moves.
    again = ok(switch.cdrs(items))["results"]
    assert [r["status"] for r in again if r["status"] != "rejected"] == ["duplicate"] * 6
    assert caller.wallet().balance == 10 * USD - 25_830
    assert_audit_clean()


def test_batch_cdr_beyond_the_credit_is_charged_what_there_is_and_flagged(switch, callers):
    caller = callers(credit=20_000)
    results = ok(switch.cdrs([cdr("cdr-1", caller.phone), cdr("cdr-2", caller.phone)]))["results"]
    assert [(r["status"], r["charged"]) for r in results] == [("charged", "0.020000"), ("charged", "0.000000")]
    assert caller.wallet().balance == 0
    assert ledger.system_balances()["credit_loss"] == -(25_830 - 20_000) - 25_830
    assert (call_row("cdr-1").flagged, call_row("cdr-1").flag_reason) == (True, "credit_shortfall")
    assert call_row("cdr-2").flagged
    assert_audit_clean()


def test_batch_cdrs_do_not_spend_credit_held_by_calls_in_progress(switch, callers):
    caller = callers(credit=1_500_000)
    ok(switch.authorize("live", caller.phone, SG_CALLEE))  # holds 1_476_000
    [result] = ok(switch.cdrs([cdr("cdr-1", caller.phone)]))["results"]
    assert result["charged"] == "0.024000"  # the 24_000 not held, of 25_830
    assert ok(switch.complete("live", 7200))["charged"] == "1.476000"
    assert caller.wallet().balance == 0
    assert_audit_clean()


def test_a_rejected_batch_item_writes_nothing(switch, callers, database):
    caller = callers(credit=10 * USD)
    ok(switch.balance(caller=caller.phone))
    before = table_snapshot(database)
    results = ok(switch.cdrs([cdr("cdr-1", "+6599999999"), cdr("cdr-2", caller.phone, -1)]))["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected"]
    assert table_snapshot(database) == before


def test_authorize_after_the_call_was_reported_as_a_cdr_is_409(switch, callers, database):
    caller = callers(credit=10 * USD)
    broke = callers(credit=0)
    ok(switch.cdrs([cdr("cdr-1", caller.phone), cdr("cdr-2", broke.phone, 0, disposition="busy")]))
    before = table_snapshot(database)
    resp = switch.authorize("cdr-1", caller.phone, SG_CALLEE)
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    # The same when the wallet could not pay anyway: never "authorized" for a call that was only reported.
    assert switch.authorize("cdr-2", broke.phone, SG_CALLEE).status_code == 409
    assert table_snapshot(database) == before
