"""Pure lot maths: draw order, drawing across lots, and what expired lots keep for holds (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credits.ledger.draw import HoldState, LotState, draw, draw_key, ordered, protected_by_holds

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def lot(id: int, remaining: int, *, expires: int = 10, source: str = "purchase", created: int = 0) -> LotState:
    """A lot expiring `expires` days and created `created` days after T0."""
    return LotState(id, source, remaining, T0 + expires * DAY, T0 + created * DAY)


def hold(id: int, amount: int, *, created: int = 0) -> HoldState:
    return HoldState(id, amount, T0 + created * DAY)


# ---------------------------------------------------------------- draw order


def test_soonest_expiry_first():
    lots = [lot(1, 5, expires=30), lot(2, 5, expires=10), lot(3, 5, expires=20)]
    assert [x.id for x in ordered(lots)] == [2, 3, 1]


def test_promo_before_paid_at_equal_expiry():
    lots = [lot(1, 5, source="purchase"), lot(2, 5, source="promo"), lot(3, 5, source="auto_recharge")]
    assert [x.id for x in ordered(lots)] == [2, 1, 3]


def test_expiry_beats_promo():
    lots = [lot(1, 5, expires=5, source="purchase"), lot(2, 5, expires=6, source="promo")]
    assert [x.id for x in ordered(lots)] == [1, 2]


def test_oldest_first_then_lowest_id():
    lots = [lot(4, 5, created=2), lot(3, 5, created=1), lot(2, 5, created=1)]
    assert [x.id for x in ordered(lots)] == [2, 3, 4]


def test_draw_key_orders_promo_by_source_only():
    assert draw_key(lot(1, 5, source="promo"))[1] == 0
    for source in ("purchase", "auto_recharge", "transfer_in", "credit_note"):
        assert draw_key(lot(1, 5, source=source))[1] == 1


# ---------------------------------------------------------------- draw


def test_draw_spans_lots_in_order():
    lots = [lot(1, 3_000_000, expires=20), lot(2, 2_000_000, expires=10), lot(3, 9_000_000, expires=30)]
    assert draw(lots, 4_500_000) == [(2, 2_000_000), (1, 2_500_000)]


def test_draw_exact_total_empties_all():
    lots = [lot(1, 3, expires=2), lot(2, 4, expires=1)]
    assert draw(lots, 7) == [(2, 4), (1, 3)]


def test_draw_zero_takes_nothing():
    assert draw([lot(1, 3)], 0) == []


def test_draw_skips_empty_lots():
    assert draw([lot(1, 0, expires=1), lot(2, 5, expires=2)], 2) == [(2, 2)]


def test_draw_short_raises():
    with pytest.raises(ValueError, match="short by 1"):
        draw([lot(1, 3), lot(2, 4)], 8)


def test_draw_negative_raises():
    with pytest.raises(ValueError):
        draw([lot(1, 3)], -1)


lots_strategy = st.lists(
    st.builds(
        lambda r, e, s, c: (r, e, s, c),
        st.integers(0, 50),
        st.integers(1, 5),
        st.sampled_from(["purchase", "promo", "credit_note", "transfer_in"]),
        st.integers(0, 3),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(specs=lots_strategy, data=st.data())
def test_draw_properties(specs, data):
    lots = [lot(i + 1, r, expires=e, source=s, created=c) for i, (r, e, s, c) in enumerate(specs)]
    total = sum(x.remaining for x in lots)
    amount = data.draw(st.integers(0, total))
    taken = draw(lots, amount)
    assert sum(part for _, part in taken) == amount
    by_id = {x.id: x for x in lots}
    assert all(0 < part <= by_id[i].remaining for i, part in taken)
    # In draw order, every lot before the last one touched is emptied (greedy, no skipping).
    order = [x.id for x in ordered(lots) if x.remaining > 0]
    touched = [i for i, _ in taken]
    assert touched == order[: len(touched)]
    for i, part in taken[:-1]:
        assert part == by_id[i].remaining


# ---------------------------------------------------------------- protected_by_holds


def test_no_holds_protect_nothing():
    assert protected_by_holds([lot(1, 5), lot(2, 7)], []) == {1: 0, 2: 0}


def test_hold_made_before_expiry_protects_the_expired_lot():
    lots = [lot(1, 10, expires=1), lot(2, 10, expires=30)]
    assert protected_by_holds(lots, [hold(1, 4, created=0)]) == {1: 4, 2: 0}


def test_hold_made_after_expiry_cannot_use_the_expired_lot():
    lots = [lot(1, 10, expires=1), lot(2, 10, expires=30)]
    assert protected_by_holds(lots, [hold(1, 4, created=2)]) == {1: 0, 2: 4}


def test_hold_made_at_the_instant_of_expiry_cannot_use_it():
    lots = [lot(1, 10, expires=1), lot(2, 10, expires=30)]
    assert protected_by_holds(lots, [hold(1, 4, created=1)]) == {1: 0, 2: 4}


def test_older_holds_are_placed_first():
    # Hold 2 is older: it takes lot 1 (draw order) and hold 1 gets what is left.
    lots = [lot(1, 6, expires=1), lot(2, 10, expires=30)]
    protected = protected_by_holds(lots, [hold(1, 5, created=0), hold(2, 5, created=-1)])
    assert protected == {1: 6, 2: 4}


def test_hold_larger_than_lots_protects_everything_it_can():
    lots = [lot(1, 3, expires=1), lot(2, 2, expires=2)]
    assert protected_by_holds(lots, [hold(1, 100, created=0)]) == {1: 3, 2: 2}


def test_protection_respects_draw_order_promo_first():
    lots = [lot(1, 5, expires=1, source="purchase"), lot(2, 5, expires=1, source="promo")]
    assert protected_by_holds(lots, [hold(1, 5, created=0)]) == {1: 0, 2: 5}


@settings(max_examples=200, deadline=None)
@given(specs=lots_strategy,
       holds=st.lists(st.tuples(st.integers(1, 40), st.integers(-1, 4)), max_size=5))
def test_protection_never_exceeds_lots_or_holds(specs, holds):
    lots = [lot(i + 1, r, expires=e, source=s, created=c) for i, (r, e, s, c) in enumerate(specs)]
    hs = [hold(i + 1, a, created=c) for i, (a, c) in enumerate(holds)]
    protected = protected_by_holds(lots, hs)
    assert set(protected) == {x.id for x in lots}
    assert all(0 <= protected[x.id] <= x.remaining for x in lots)
    assert sum(protected.values()) <= sum(h.amount for h in hs)
    for x in lots:
        # Only holds made before a lot expired may claim it.
        if not any(x.expires_at > h.created_at for h in hs):
            assert protected[x.id] == 0
