"""Pure lot maths: draw order, drawing an amount across lots, and what expired lots must keep for holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class LotState:
    id: int
    source: str
    remaining: int
    expires_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class HoldState:
    id: int
    amount: int
    created_at: datetime


def draw_key(lot: LotState) -> tuple[datetime, int, datetime, int]:
    """Sort key of the draw order: soonest expiry, then promo before paid, then oldest (then lowest id)."""
    return (lot.expires_at, 0 if lot.source == "promo" else 1, lot.created_at, lot.id)


def ordered(lots: Iterable[LotState]) -> list[LotState]:
    return sorted(lots, key=draw_key)


def draw(lots: Iterable[LotState], amount: int) -> list[tuple[int, int]]:
    """Take `amount` from `lots` in draw order; return [(lot_id, taken)] with taken > 0.

    Raises ValueError if the lots hold less than `amount`.
    """
    if amount < 0:
        raise ValueError("amount must be >= 0")
    taken: list[tuple[int, int]] = []
    left = amount
    for lot in ordered(lots):
        if left == 0:
            break
        part = min(lot.remaining, left)
        if part > 0:
            taken.append((lot.id, part))
            left -= part
    if left:
        raise ValueError(f"lots short by {left}")
    return taken


def protected_by_holds(lots: Sequence[LotState], holds: Sequence[HoldState]) -> dict[int, int]:
    """How much of each lot the active holds are entitled to.

    A hold may draw on any lot that had not expired when it was created. Holds are placed oldest first, each
    across its eligible lots in draw order, using what earlier holds left. The answer says, per lot id, how
    much must stay in it (expiry keeps this much of an expired lot and breaks the rest).
    """
    capacity = {lot.id: lot.remaining for lot in lots}
    protected = dict.fromkeys(capacity, 0)
    for hold in sorted(holds, key=lambda h: (h.created_at, h.id)):
        left = hold.amount
        for lot in ordered(lot for lot in lots if lot.expires_at > hold.created_at):
            if left == 0:
                break
            part = min(capacity[lot.id], left)
            capacity[lot.id] -= part
            protected[lot.id] += part
            left -= part
    return protected


def next_expiry(lots: Sequence[LotState], taken: list[tuple[int, int]]) -> datetime | None:
    """A wallet's next expiry once `taken` [(lot_id, amount)] has been drawn from its open `lots`."""
    drawn = dict(taken)
    left = [lot.expires_at for lot in lots if lot.remaining - drawn.get(lot.id, 0) > 0]
    return min(left) if left else None
