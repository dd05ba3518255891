"""Switch requests at the same time on one wallet: holds share the credit, replays race without a second
reservation or charge, the call limit holds, overlapping CDR batches charge each call once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from credits.calls import service as calls
from credits.ledger import service as ledger
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    SG_CALLEE,
    UK_CALLEE,
    USD,
    assert_audit_clean,
    callers_fixture,
    holds_of,
    plan_fixture,
)

T = TypeVar("T")
THREADS = 12


def at_once(fns: list[Callable[[], T]]) -> list[T]:
    """Run the functions in threads released together; return their results in order (re-raising errors)."""
    barrier = threading.Barrier(len(fns))

    def go(fn: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return fn()

    with ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(go, fn) for fn in fns]
        return [f.result(timeout=120) for f in futures]


def test_simultaneous_calls_never_reserve_or_spend_more_than_the_wallet_holds(callers):
    caller = callers(credit=2 * USD)
    answers = at_once([lambda i=i: calls.authorize(f"c-{i}", caller.phone, UK_CALLEE) for i in range(THREADS)])
    granted = [a for a in answers if a.authorized]
    assert granted and all(a.reason == "insufficient_credit" for a in answers if not a.authorized)
    reserved = sum(a.reserved for a in granted)
    assert reserved <= 2 * USD
    wallet = caller.wallet()
    assert wallet.held == reserved == sum(h.amount for h in holds_of(caller.wallet_id) if h.status == "active")
    # Every call runs to its limit, reported at the same time: the charges add up to no more than the balance.
    results = at_once([lambda a=a: calls.complete(a.call_id, a.max_duration_s, "answered") for a in granted])
    charged = sum(r.charged for r in results)
    assert charged <= 2 * USD
    assert all(r.charged <= a.reserved for r, a in zip(results, granted, strict=True))
    assert ledger.get_wallet(caller.wallet_id).balance == 2 * USD - charged
    assert "credit_loss" not in ledger.system_balances()
    assert_audit_clean()


def test_racing_authorize_retries_reserve_once(callers):
    caller = callers(credit=10 * USD)
    answers = at_once([lambda: calls.authorize("same-call", caller.phone, UK_CALLEE)] * THREADS)
    assert len({(a.authorized, a.max_duration_s, a.reserved) for a in answers}) == 1
    assert answers[0].authorized
    [hold] = holds_of(caller.wallet_id)
    assert caller.wallet().held == hold.amount == answers[0].reserved
    assert_audit_clean()


def test_racing_complete_retries_charge_once(callers):
    caller = callers(credit=10 * USD)
    calls.authorize("c-1", caller.phone, SG_CALLEE)
    results = at_once([lambda: calls.complete("c-1", 125, "answered")] * THREADS)
    assert {(r.charged, r.billed_duration_s) for r in results} == {(25_830, 126)}
    assert caller.wallet().balance == 10 * USD - 25_830
    assert ledger.system_balances()["usage_revenue"] == 25_830
    assert_audit_clean()


def test_the_call_limit_holds_under_a_burst(callers):
    caller = callers(credit=10 * USD)
    calls.set_max_concurrent_calls(caller.wallet_id, 3)
    answers = at_once([lambda i=i: calls.authorize(f"c-{i}", caller.phone, SG_CALLEE) for i in range(THREADS)])
    assert sum(a.authorized for a in answers) == 3
    assert {a.reason for a in answers if not a.authorized} == {"too_many_calls"}
    assert_audit_clean()


def test_overlapping_cdr_batches_charge_each_call_once(callers):
    caller = callers(credit=10 * USD)

    def batch(ids: range) -> list[dict[str, Any]]:
        return [{"call_id": f"cdr-{i}", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 125,
                 "answered_at": "2026-11-22T11:00:00Z"} for i in ids]

    batches = [batch(range(start, start + 40)) for start in (0, 20, 10, 30, 0, 35)]
    results = at_once([lambda b=b: calls.import_cdrs(b) for b in batches])
    charged = [r.call_id for rs in results for r in rs if r.status == "charged"]
    assert sorted(charged) == sorted(f"cdr-{i}" for i in range(75))
    assert all(r.status in ("charged", "duplicate") for rs in results for r in rs)
    assert caller.wallet().balance == 10 * USD - 75 * 25_830
    assert_audit_clean()


def test_cdrs_and_authorised_calls_at_once_share_the_credit(callers):
    caller = callers(credit=1 * USD)

    def cdrs(start: int) -> Callable[[], Any]:
        return lambda: calls.import_cdrs([
            {"call_id": f"cdr-{start + i}", "caller": caller.phone, "callee": UK_CALLEE, "duration_s": 60,
             "answered_at": "2026-11-22T11:00:00Z"} for i in range(5)])

    def call(i: int) -> Callable[[], Any]:
        return lambda: calls.authorize(f"c-{i}", caller.phone, UK_CALLEE)

    at_once([cdrs(0), call(0), cdrs(5), call(1), cdrs(10), call(2)])
    wallet = caller.wallet()
    assert 0 <= wallet.held <= wallet.balance  # a hold never covers credit a CDR took, nor the reverse
    assert_audit_clean()
