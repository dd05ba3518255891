"""The PostgreSQL fast path of authorize and complete (credits/calls/fastpath.py) against the general path.

The same calls are made on two wallets with the same credit, one with the fast path on and one with it off;
the answers and every row they leave (wallet, lots, holds, calls, postings) must be the same. Then the cases
the fast path hands over to the general path, and its in-SQL assertion, which a fault injection triggers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits import db as db_mod
from credits.calls import fastpath
from credits.calls import service as calls
from credits.errors import Conflict
from credits.ledger import service as ledger
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    FREE_CALLEE,
    NO_RATE_CALLEE,
    SG_CALLEE,
    UK_CALLEE,
    US_CALLEE,
    USD,
    assert_audit_clean,
    callers_fixture,
    plan_fixture,
    statements,
    wallet_rows,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(name="general_path")
def general_path_fixture() -> Iterator[Any]:
    """A context switch: `with general_path(): ...` runs the general path only."""
    from contextlib import contextmanager

    @contextmanager
    def off() -> Iterator[None]:
        fastpath.ENABLED = False
        try:
            yield
        finally:
            fastpath.ENABLED = True

    yield off
    fastpath.ENABLED = True


def script(prefix: str, caller: Any) -> list[Any]:
    """Calls of every kind on one wallet; the answers, without the call ids."""
    answers: list[Any] = []

    def call(n: int, callee: str, duration: int, disposition: str = "answered", **times: Any) -> None:
        a = calls.authorize(f"{prefix}-{n}", caller.phone, callee)
        answers.append(("authorize", n, a.authorized, a.max_duration_s, a.reason, a.reserved, a.currency, a.rate,
                        a.balance, a.available))
        if a.authorized:
            c = calls.complete(f"{prefix}-{n}", duration, disposition, **times)
            answers.append(("complete", n, c.charged, c.billed_duration_s, c.balance, c.flagged))

    call(1, SG_CALLEE, 125)                       # 60/6 sub-cent: 125 s bills 126 s
    call(2, US_CALLEE, 0, "no_answer")            # nothing charged, hold released
    call(3, US_CALLEE, 30, "busy")                # busy: nothing charged
    call(4, UK_CALLEE, 1)                         # connect fee, 1/1
    call(5, FREE_CALLEE, 300)                     # a free destination (the general path's token hold)
    call(6, NO_RATE_CALLEE, 10)                   # refused: no rate
    call(7, SG_CALLEE, 61, answered_at="2026-11-23T10:00:00Z", ended_at="2026-11-23T10:01:01Z")
    # Replays: the same answer again, nothing more reserved or charged.
    again = calls.authorize(f"{prefix}-1", caller.phone, SG_CALLEE)
    answers.append(("replay authorize", again.authorized, again.max_duration_s, again.reserved))
    done = calls.complete(f"{prefix}-1", 125, "answered")
    answers.append(("replay complete", done.charged, done.billed_duration_s, done.flagged))
    # Reported longer than allowed: the charge goes beyond the hold, into available credit and then credit_loss.
    a = calls.authorize(f"{prefix}-8", caller.phone, UK_CALLEE)
    answers.append(("authorize", 8, a.authorized, a.max_duration_s, a.reserved))
    c = calls.complete(f"{prefix}-8", 86_400, "answered")
    answers.append(("complete", 8, c.charged, c.billed_duration_s, c.balance, c.flagged))
    after = calls.authorize(f"{prefix}-9", caller.phone, SG_CALLEE)
    answers.append(("authorize", 9, after.authorized, after.reason))
    return answers


def test_the_fast_path_answers_and_writes_exactly_what_the_general_path_does(callers, general_path, clock):
    expiry = clock.now() + timedelta(days=30)
    fast, slow = callers(credit=0), callers(credit=0)
    for caller in (fast, slow):
        # Two lots expiring at different times: charges draw from the one expiring first, then the other.
        ledger.grant(caller.wallet_id, 20_000, "purchase", expires_at=expiry)
        ledger.grant(caller.wallet_id, 130_000, "purchase", expires_at=expiry + timedelta(days=30))
    with statements(db_mod.get()) as sent:
        fast_answers = script("f", fast)
    assert any("xmin = CAST" in s for s in sent), "the fast path did not run"
    with general_path(), statements(db_mod.get()) as sent:
        slow_answers = script("s", slow)
    assert not any(s.startswith("WITH h AS") for s in sent), "the general path used the fast one"
    assert fast_answers == slow_answers
    assert fast_answers[-1] == ("authorize", 9, False, "insufficient_credit")
    assert wallet_rows(fast.wallet_id) == wallet_rows(slow.wallet_id)
    assert_audit_clean()


def test_out_of_the_common_case_the_general_path_decides(callers, clock):
    limited = callers(credit=10 * USD)
    calls.set_max_concurrent_calls(limited.wallet_id, 1)
    assert calls.authorize("lim-1", limited.phone, SG_CALLEE).authorized
    assert calls.authorize("lim-2", limited.phone, SG_CALLEE).reason == "too_many_calls"

    expiring = callers(credit=0)
    ledger.grant(expiring.wallet_id, 5 * USD, "purchase", expires_at=clock.now() + timedelta(minutes=5))
    ledger.grant(expiring.wallet_id, 1 * USD, "purchase", expires_at=clock.now() + timedelta(days=5))
    clock.advance(timedelta(minutes=10))  # the first lot is due to expire; the job has not run
    answer = calls.authorize("exp-1", expiring.phone, SG_CALLEE)
    assert answer.authorized and answer.balance == 1 * USD  # expired credit is never offered

    caller = callers(credit=10 * USD)
    assert calls.import_cdrs([{"call_id": "cdr-1", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 30,
                               "answered_at": "2026-11-23T10:00:00Z"}])[0].status == "charged"
    with pytest.raises(Conflict):
        calls.authorize("cdr-1", caller.phone, SG_CALLEE)  # a call_id already used by a CDR
    assert_audit_clean()


def test_a_call_id_taken_since_the_read_trips_the_assertion_and_writes_nothing(callers, monkeypatch):
    """Fault injection: the read is made to miss that the call_id is in use (as if a CDR had taken it just
    after the read). The write's in-SQL assertion must undo the credit held and the hold, and the general
    path then refuses the call_id."""
    caller = callers(credit=10 * USD)
    calls.import_cdrs([{"call_id": "taken", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 30,
                        "answered_at": "2026-11-23T10:00:00Z"}])
    before = caller.wallet()
    blind = fastpath._WALLET_BY_CALLER.replace(
        "EXISTS (SELECT 1 FROM calls WHERE call_id = %(call_id)s) AS seen", "CAST(%(call_id)s AS text) IS NULL")
    assert blind != fastpath._WALLET_BY_CALLER
    monkeypatch.setattr(fastpath, "_WALLET_BY_CALLER", blind)
    with statements(db_mod.get()) as sent:
        assert fastpath.authorize("taken", caller.phone, SG_CALLEE, None, before_now()) is None
    assert any("INSERT INTO holds" in s for s in sent)  # the write was tried, and undone
    after = caller.wallet()
    assert (after.balance, after.held) == (before.balance, before.held)
    with db_mod.get().engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM holds WHERE key = 'call:taken'")).scalar() == 0
    with pytest.raises(Conflict):
        calls.authorize("taken", caller.phone, SG_CALLEE)
    assert_audit_clean()


def touch_wallet_before_the_write(wallet_id: int, marker: str) -> Any:
    """A raw-statement hook that, just before the fast path's write (the statement containing `marker`),
    updates the wallet from another connection, as a concurrent movement would."""
    done: list[bool] = []

    def hook(sql: str) -> None:
        if marker in sql and not done:
            done.append(True)
            with db_mod.get().engine.begin() as conn:
                conn.execute(sa.text("UPDATE wallets SET held = held WHERE id = :w"), {"w": wallet_id})

    return hook


@pytest.mark.parametrize("step", ["authorize", "complete"])
def test_a_wallet_changed_between_read_and_write_writes_nothing_and_the_general_path_decides(callers, step):
    caller = callers(credit=10 * USD)
    if step == "complete":
        assert calls.authorize("c-1", caller.phone, SG_CALLEE).authorized
    before = caller.wallet()
    hook = touch_wallet_before_the_write(caller.wallet_id, "xmin = CAST")
    db_mod.raw_statement_hooks.append(hook)
    try:
        if step == "authorize":
            assert fastpath.authorize("c-1", caller.phone, SG_CALLEE, None, before_now()) is None
        else:
            assert fastpath.complete("c-1", 125, "answered", None, None, None, before_now()) is None
    finally:
        db_mod.raw_statement_hooks.remove(hook)
    after = caller.wallet()
    assert (after.balance, after.held) == (before.balance, before.held)  # the fast path wrote nothing
    # The general path (what the service falls back to) then does it.
    if step == "authorize":
        assert calls.authorize("c-1", caller.phone, SG_CALLEE).authorized
        assert caller.wallet().held > before.held
    else:
        assert calls.complete("c-1", 125, "answered").charged == 25_830
    assert_audit_clean()


def before_now() -> Any:
    from credits import clock

    return clock.now()
