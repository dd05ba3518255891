"""Property (Hypothesis) at the service level, on the real database: whatever the tariff, the credit and the
calls (overlapping, unanswered, cut at their limit or reported longer), a call within its allowed duration is
charged exactly its cost, nothing is ever charged beyond the wallet, and the ledger audit stays clean."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits.accounts import service as accounts
from credits.calls import service as calls
from credits.ledger import service as ledger
from credits.rating import engine
from credits.rating import service as rating
from credits.rating.engine import Rate
from tests.integration.switch_fixtures import assert_audit_clean

_serial = itertools.count()

rates = st.builds(
    Rate,
    prefix=st.just("65"),
    destination=st.just("Singapore"),
    rate_per_minute=st.integers(0, 2_000_000),
    connect_fee=st.integers(0, 200_000),
    first_increment_s=st.sampled_from([1, 6, 30, 45, 60]),
    next_increment_s=st.sampled_from([1, 6, 10, 30, 60]),
)
# (start a call?, its duration as a fraction of the allowed one in percent, disposition)
steps = st.lists(
    st.tuples(st.booleans(), st.integers(0, 150), st.sampled_from(["answered"] * 4 + ["no_answer", "busy"])),
    min_size=1, max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=rates, credit=st.integers(0, 5_000_000), plan=steps, limit=st.sampled_from([None, 1, 2, 3]))
def test_calls_never_overspend_and_are_charged_their_cost(app: Any, rate: Rate, credit: int, plan: Any,
                                                          limit: int | None) -> None:
    n = next(_serial)
    rating.import_plan(f"p{n}", [rate], "USD")
    account = accounts.create_account(f"prop{n}@example.com", "correct horse battery", phone=f"+65620{n:05d}",
                                      plan=f"p{n}")
    wallet_id = account.wallet.id
    if credit:
        ledger.grant(wallet_id, credit, "purchase")
    calls.set_max_concurrent_calls(wallet_id, limit)
    cap = 7200
    open_calls: list[tuple[str, int, int]] = []
    charged_total = 0
    for i, (start, percent, disposition) in enumerate(plan):
        if start or not open_calls:
            before = ledger.get_wallet(wallet_id)
            answer = calls.authorize(f"p{n}-{i}", f"+65620{n:05d}", "+6561234567")
            if answer.authorized:
                share = before.available // (limit - len(open_calls)) if limit else before.available
                assert answer.reserved <= max(share, 1)
                assert engine.cost(rate, answer.max_duration_s) <= answer.reserved
                assert answer.max_duration_s == cap or answer.max_duration_s == engine.max_duration(rate, share, cap)
                open_calls.append((answer.call_id, answer.max_duration_s, answer.reserved))
            else:
                assert answer.reason in ("insufficient_credit", "too_many_calls")
                if answer.reason == "too_many_calls":
                    assert limit is not None and len(open_calls) >= limit
            continue
        call_id, allowed, _reserved = open_calls.pop(0)
        duration = allowed * percent // 100
        result = calls.complete(call_id, duration, disposition)
        cost = engine.cost(rate, duration) if disposition == "answered" else 0
        if duration <= allowed:
            assert result.charged == cost  # within its limit a call is always paid in full
        else:
            assert result.charged <= cost
        charged_total += result.charged
    for call_id, allowed, _reserved in open_calls:
        result = calls.complete(call_id, allowed, "answered")
        assert result.charged == engine.cost(rate, allowed)
        charged_total += result.charged
    wallet = ledger.get_wallet(wallet_id)
    assert charged_total <= credit
    assert (wallet.balance, wallet.held) == (credit - charged_total, 0)
    assert_audit_clean()
