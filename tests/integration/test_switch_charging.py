"""Call charging through the switch API: amounts by hand, what charges nothing, replays, shared credit, holds
that outlive their call, lots that expire during one. The ledger audit is clean after each."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from credits.calls import service as calls
from credits.ledger import service as ledger
from tests.conftest import row_counts, table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    FREE_CALLEE,
    SF_CALLEE,
    SG_CALLEE,
    UK_CALLEE,
    US_CALLEE,
    USD,
    assert_audit_clean,
    call_row,
    callers_fixture,
    holds_of,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
)


def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body: dict[str, Any] = resp.get_json()
    return body


def micro(text: str) -> int:
    whole, frac = text.split(".")
    return int(whole) * USD + int(frac)


@pytest.fixture(autouse=True)
def audit_after(app: Any) -> Any:
    yield
    assert_audit_clean()


# ---------------------------------------------------------------- amounts


@pytest.mark.parametrize(("callee", "duration", "billed", "charged"), [
    # Singapore 0.0123/min, 60/6: the first 60 s are billed whole, then 6 s steps, one rounding up per call.
    (SG_CALLEE, 1, 60, 12_300),
    (SG_CALLEE, 60, 60, 12_300),
    (SG_CALLEE, 61, 66, 13_530),
    (SG_CALLEE, 66, 66, 13_530),  # exactly on an increment boundary
    (SG_CALLEE, 125, 126, 25_830),
    (SG_CALLEE, 3601, 3606, 739_230),
    # North America 0.008/min, 60/60.
    (US_CALLEE, 125, 180, 24_000),
    (US_CALLEE, 180, 180, 24_000),
    (US_CALLEE, 181, 240, 32_000),
    # San Francisco 0.006/min, 30/6 (longest prefix inside 1): 31 s bill 36 s = 3_600 micro.
    (SF_CALLEE, 31, 36, 3_600),
    (SF_CALLEE, 29, 30, 3_000),
    # UK 0.05/min + 0.05 connect fee, 1/1: 1 s = 50_000 + ceil(50_000 / 60) = 50_834 (833.33 rounded up once).
    (UK_CALLEE, 1, 1, 50_834),
    (UK_CALLEE, 7, 7, 55_834),  # 50_000 + ceil(350_000 / 60) = 50_000 + 5_834
    (UK_CALLEE, 60, 60, 100_000),
    # Free destination: nothing charged however long.
    (FREE_CALLEE, 3600, 3600, 0),
])
def test_answered_calls_are_charged_by_hand(switch, callers, callee, duration, billed, charged):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, callee))
    body = ok(switch.complete("c-1", duration))
    assert (body["charged"], body["billed_duration_s"]) == (f"0.{charged:06d}", billed)
    assert micro(body["balance"]) == 10 * USD - charged
    wallet = caller.wallet()
    assert (wallet.balance, wallet.held) == (10 * USD - charged, 0)
    [hold] = holds_of(caller.wallet_id)
    # A free call's token hold is released, not settled: there is nothing to charge.
    assert (hold.status, hold.charged, hold.shortfall) == (("settled", charged, 0) if charged else
                                                           ("released", None, 0))
    row = call_row("c-1")
    assert (row.status, row.duration_s, row.billed_s, row.cost, row.charged, row.disposition, row.flagged) == (
        "completed", duration, billed, charged, charged, "answered", False)


def test_charge_goes_to_usage_revenue(switch, callers):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    ok(switch.complete("c-1", 125))
    assert ledger.system_balances().get("usage_revenue") == 25_830
    [*_, line] = reversed(ledger.statement(caller.wallet_id).lines)
    assert (line.kind, line.amount, line.balance_after) == ("settle", -25_830, 9_974_170)


@pytest.mark.parametrize(("disposition", "duration"), [
    ("no_answer", 0), ("busy", 0), ("failed", 0), ("cancelled", 0),
    ("no_answer", 30), ("busy", 12), ("failed", 5), ("cancelled", 45),  # ringing time is not talk time
    ("answered", 0),
])
def test_unanswered_calls_charge_nothing_and_release_the_hold(switch, callers, disposition, duration):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, UK_CALLEE))
    assert caller.wallet().held > 0
    transactions = ledger.transactions_of(caller.wallet_id)
    body = ok(switch.complete("c-1", duration, disposition))
    assert body == {"call_id": "c-1", "charged": "0.000000", "billed_duration_s": 0, "balance": "10.000000"}
    wallet = caller.wallet()
    assert (wallet.balance, wallet.held) == (10 * USD, 0)
    [hold] = holds_of(caller.wallet_id)
    assert (hold.status, hold.charged) == ("released", None)
    assert ledger.transactions_of(caller.wallet_id) == transactions  # no journal entry at all
    row = call_row("c-1")
    assert (row.status, row.disposition, row.cost, row.charged, row.billed_s) == (
        "completed", disposition, 0, 0, 0)


# ---------------------------------------------------------------- replays


def test_complete_replay_returns_the_first_answer_and_moves_nothing(switch, callers, database):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    first = ok(switch.complete("c-1", 125, ended_at="2026-11-22T12:02:05Z"))
    before = table_snapshot(database)
    assert ok(switch.complete("c-1", 125, ended_at="2026-11-22T12:02:05Z")) == first
    assert ok(switch.complete("c-1", 125)) == first  # the duration and disposition decide; times may be left out
    assert table_snapshot(database) == before
    assert switch.complete("c-1", 126).status_code == 409
    assert switch.complete("c-1", 125, "no_answer").status_code == 409
    assert table_snapshot(database) == before


def test_unanswered_complete_replay(switch, callers, database):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    first = ok(switch.complete("c-1", 0, "busy"))
    before = table_snapshot(database)
    assert ok(switch.complete("c-1", 0, "busy")) == first
    assert switch.complete("c-1", 60).status_code == 409
    assert table_snapshot(database) == before


def test_authorize_replay_returns_the_same_answer_and_reserves_nothing_more(switch, callers, database):
    caller = callers(credit=10 * USD)
    first = ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    counts, before = row_counts(database), table_snapshot(database)
    for _ in range(3):
        assert ok(switch.authorize("c-1", caller.phone, SG_CALLEE)) == first
    assert row_counts(database) == counts and table_snapshot(database) == before
    assert caller.wallet().held == 1_476_000 and len(holds_of(caller.wallet_id)) == 1


def test_authorize_replay_when_the_first_answer_took_all_the_credit(switch, callers, database):
    # The retry must not be refused for lack of the credit its own first attempt reserved.
    caller = callers(credit=50_000)
    calls.set_max_concurrent_calls(caller.wallet_id, 1)
    first = ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    assert first["available"] == "0.000800"
    before = table_snapshot(database)
    assert ok(switch.authorize("c-1", caller.phone, SG_CALLEE)) == first
    assert table_snapshot(database) == before


def test_authorize_replay_after_complete_reserves_nothing(switch, callers, database):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    ok(switch.complete("c-1", 125))
    before = table_snapshot(database)
    body = ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    assert (body["authorized"], body["max_duration_s"]) == (True, 7200)
    assert table_snapshot(database) == before
    assert caller.wallet().held == 0


# ---------------------------------------------------------------- simultaneous calls share the credit


def test_two_calls_can_never_overspend(switch, callers):
    caller = callers(credit=2 * USD)
    a = ok(switch.authorize("c-a", caller.phone, SG_CALLEE))
    b = ok(switch.authorize("c-b", caller.phone, SG_CALLEE))
    # A holds cost(7200) = 1.476; B gets what is left, 0.524: k = floor((31_440_000 - 738_000) / 73_800) = 416,
    # 60 + 416 * 6 = 2556 s for 523_980. A third call finds 20 micro-units: not one increment.
    assert (a["reserved"], b["reserved"], b["max_duration_s"], b["available"]) == (
        "1.476000", "0.523980", 2556, "0.000020")
    assert ok(switch.authorize("c-c", caller.phone, SG_CALLEE))["reason"] == "insufficient_credit"
    # Both calls run to their limit: together they cost what the wallet holds, never more.
    charged_a = micro(ok(switch.complete("c-a", 7200))["charged"])
    charged_b = micro(ok(switch.complete("c-b", 2556))["charged"])
    assert (charged_a, charged_b) == (1_476_000, 523_980)
    assert charged_a + charged_b <= 2 * USD
    assert caller.wallet().balance == 20
    assert "credit_loss" not in ledger.system_balances()


def test_calls_reported_longer_than_allowed_take_available_credit_then_book_the_loss(switch, callers):
    caller = callers(credit=2 * USD)
    ok(switch.authorize("c-a", caller.phone, SG_CALLEE))
    ok(switch.authorize("c-b", caller.phone, SG_CALLEE))
    # The switch let both run past max_duration_s. A: 7300 s -> 7302 billed s -> 1_496_910; its hold
    # (1_476_000) plus the 20 available cover 1_476_020, the 20_890 left is a loss.
    a = ok(switch.complete("c-a", 7300))
    assert (a["charged"], a["billed_duration_s"], a["balance"]) == ("1.476020", 7302, "0.523980")
    # B: 3000 s -> 615_000; only its hold, 523_980, is left.
    b = ok(switch.complete("c-b", 3000))
    assert (b["charged"], b["balance"]) == ("0.523980", "0.000000")
    assert micro(a["charged"]) + micro(b["charged"]) == 2 * USD
    assert ledger.system_balances()["credit_loss"] == -(20_890 + 91_020)
    assert ledger.system_balances()["usage_revenue"] == 1_496_910 + 615_000
    for call_id, shortfall in (("c-a", 20_890), ("c-b", 91_020)):
        row = call_row(call_id)
        assert (row.flagged, row.flag_reason, row.cost - row.charged) == (True, "credit_shortfall", shortfall)
    assert [h.shortfall for h in holds_of(caller.wallet_id)] == [20_890, 91_020]


def test_max_concurrent_calls_share_the_credit(switch, callers):
    caller = callers(credit=300_000)
    calls.set_max_concurrent_calls(caller.wallet_id, 3)
    # k calls in progress: a new one reserves at most available / (3 - k). Each share affords 486 s at
    # 0.0123/min (60 + 71 * 6) = 99_630; without the limit the first call alone would hold 298_890.
    expected = [(300_000, 100_000), (200_370, 100_185), (100_740, 100_740)]
    for k, (available, share) in enumerate(expected):
        assert caller.wallet().available == available
        body = ok(switch.authorize(f"c-{k}", caller.phone, SG_CALLEE))
        assert (body["max_duration_s"], body["reserved"]) == (486, "0.099630")
        assert micro(body["reserved"]) <= available // (3 - k) == share
    assert ok(switch.authorize("c-3", caller.phone, SG_CALLEE)) == {
        "call_id": "c-3", "authorized": False, "max_duration_s": 0, "reason": "too_many_calls"}
    # One call ends (100 s -> 102 billed s -> 20_910): the next one may have all that is left, as k = 2.
    ok(switch.complete("c-0", 100))
    assert caller.wallet().available == 79_830
    body = ok(switch.authorize("c-3", caller.phone, SG_CALLEE))
    # floor((60 * 79_830 - 738_000) / 73_800) = 54 -> 384 s for 78_720.
    assert (body["max_duration_s"], body["reserved"]) == (384, "0.078720")


def test_max_concurrent_calls_can_be_lifted(switch, callers):
    caller = callers(credit=10 * USD)
    calls.set_max_concurrent_calls(caller.wallet_id, 1)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    assert ok(switch.authorize("c-2", caller.phone, SG_CALLEE))["reason"] == "too_many_calls"
    calls.set_max_concurrent_calls(caller.wallet_id, None)
    assert ok(switch.authorize("c-2", caller.phone, SG_CALLEE))["authorized"]


def test_a_swept_call_no_longer_counts_as_in_progress(switch, callers, clock):
    caller = callers(credit=10 * USD)
    calls.set_max_concurrent_calls(caller.wallet_id, 1)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=7200 + 120)
    assert ledger.sweep_holds() == 1
    # Not yet marked abandoned, but its hold is gone: it does not block the wallet's next call.
    assert ok(switch.authorize("c-2", caller.phone, SG_CALLEE))["authorized"]


def test_update_shares_new_credit_with_the_other_calls(switch, callers):
    caller = callers(credit=300_000)
    calls.set_max_concurrent_calls(caller.wallet_id, 2)
    # Half of 0.30: floor((9_000_000 - 738_000) / 73_800) = 111 -> 60 + 666 = 726 s for 148_830.
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    assert call_row("c-1").reserved == 148_830
    ledger.grant(caller.wallet_id, 200_000, "purchase")
    # Available 351_170; with room for one more call, this one may add half: 148_830 + 175_585 = 324_415,
    # floor((60 * 324_415 - 738_000) / 73_800) = 253 -> 60 + 1518 = 1578 s for 323_490.
    assert ok(switch.update("c-1", 300)) == {"authorized": True, "max_duration_s": 1578}
    assert call_row("c-1").reserved == 323_490
    assert caller.wallet().available == 500_000 - 323_490


# ---------------------------------------------------------------- holds that outlive their call


def test_hold_past_max_duration_and_grace_is_swept_and_the_call_abandoned(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=7200 + 119)
    assert ledger.sweep_holds() == 0
    assert calls.mark_abandoned() == 0
    clock.advance(seconds=1)
    assert ledger.sweep_holds() == 1
    assert calls.mark_abandoned() == 1
    assert calls.mark_abandoned() == 0
    [hold] = holds_of(caller.wallet_id)
    assert hold.status == "expired"
    assert caller.wallet().held == 0
    assert call_row("c-1").status == "abandoned"
    assert ok(switch.update("c-1", 7300)) == {"authorized": False, "max_duration_s": 7200}


def test_late_complete_still_charges_from_available_credit(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=7200 + 120)
    ledger.sweep_holds()
    calls.mark_abandoned()
    body = ok(switch.complete("c-1", 7300))
    assert body == {"call_id": "c-1", "charged": "1.496910", "billed_duration_s": 7302, "balance": "8.503090"}
    row = call_row("c-1")
    assert (row.status, row.charged, row.flagged, row.flag_reason) == (
        "completed", 1_496_910, True, "completed_after_abandon")
    [hold] = holds_of(caller.wallet_id)
    assert (hold.status, hold.charged, hold.shortfall) == ("expired", 1_496_910, 0)
    assert caller.wallet().held == 0
    assert "credit_loss" not in ledger.system_balances()
    assert ok(switch.complete("c-1", 7300)) == body


def test_late_complete_books_what_cannot_be_covered_to_credit_loss(switch, callers, clock):
    caller = callers(credit=2 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=7200 + 120)
    assert ledger.sweep_holds() == 1
    assert calls.mark_abandoned() == 1
    # Meanwhile a new call holds 1.476 of the 2.00: the late report may take only the 0.524 left.
    ok(switch.authorize("c-2", caller.phone, SG_CALLEE))
    body = ok(switch.complete("c-1", 7300))
    assert (body["charged"], body["balance"]) == ("0.524000", "1.476000")
    assert ledger.system_balances()["credit_loss"] == -(1_496_910 - 524_000)
    row = call_row("c-1")
    assert (row.flagged, row.flag_reason, row.cost, row.charged) == (True, "credit_shortfall", 1_496_910, 524_000)
    # The new call keeps its whole hold.
    assert ok(switch.complete("c-2", 60))["charged"] == "0.012300"
    assert caller.wallet().balance == 2 * USD - 524_000 - 12_300


def test_late_complete_before_the_call_is_marked_abandoned(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=7200 + 120)
    ledger.sweep_holds()
    body = ok(switch.complete("c-1", 125))
    assert body["charged"] == "0.025830"
    assert call_row("c-1").flag_reason == "completed_after_abandon"
    assert calls.mark_abandoned() == 0  # completed calls stay completed


def test_late_unanswered_complete_charges_nothing(switch, callers, clock):
    caller = callers(credit=10 * USD)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    clock.advance(seconds=7200 + 120)
    ledger.sweep_holds()
    calls.mark_abandoned()
    body = ok(switch.complete("c-1", 0, "no_answer"))
    assert (body["charged"], body["balance"]) == ("0.000000", "10.000000")
    assert [h.status for h in holds_of(caller.wallet_id)] == ["expired"]
    row = call_row("c-1")
    assert (row.status, row.flagged) == ("completed", False)


# ---------------------------------------------------------------- credit that expires during a call


def test_a_lot_expiring_during_the_call_pays_for_it_but_not_for_more(switch, callers, clock):
    start = clock.now()
    caller = callers(credit=2 * USD, expires_at=start + timedelta(hours=1))
    ledger.grant(caller.wallet_id, 1 * USD, "purchase")  # expires in 180 days
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))  # holds 1.476 of the expiring lot
    clock.advance(hours=2)
    # The call ran 7300 s: 1_496_910, more than its hold. The hold is paid from the lot that expired during
    # the call (it was live when the call was authorised); the 20_910 above it must come from live credit,
    # and the expired lot's unheld 0.524 goes to breakage whether or not the expiry job has run yet.
    body = ok(switch.complete("c-1", 7300))
    assert (body["charged"], body["balance"]) == ("1.496910", "0.979090")  # 3.00 - 0.524 broken - 1.49691
    ledger.expire_lots()
    assert ledger.system_balances()["breakage"] == 524_000
    wallet = caller.wallet()
    assert (wallet.balance, wallet.held) == (1 * USD - 20_910, 0)


def test_update_does_not_extend_a_call_with_expired_credit(switch, callers, clock):
    start = clock.now()
    caller = callers(credit=300_000, expires_at=start + timedelta(minutes=5))
    calls.set_max_concurrent_calls(caller.wallet_id, 2)
    ok(switch.authorize("c-1", caller.phone, SG_CALLEE))
    assert call_row("c-1").max_duration_s == 726
    clock.advance(minutes=6)
    # The unheld half of the lot expired a minute ago: it cannot lengthen the call.
    assert ok(switch.update("c-1", 360)) == {"authorized": True, "max_duration_s": 726}
