"""Rating: rates, longest-prefix match, and the pure billed-seconds, cost and max-duration maths (DESIGN §4)."""

from __future__ import annotations

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

__all__ = [
    "DEFAULT_MAX_CALL_DURATION_S",
    "PrefixTable",
    "Rate",
    "billed_seconds",
    "cost",
    "max_duration",
    "normalise_number",
    "reserve_amount",
]
