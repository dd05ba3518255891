"""Benchmark in-process rating: longest-prefix lookup + cost against a 50,000-prefix plan; prints CDRs/s."""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from credits.rating.engine import PrefixTable, Rate, cost, max_duration  # noqa: E402

INCREMENTS = [(60, 60), (30, 6), (1, 1), (60, 1), (45, 10), (30, 30)]


def build_plan(rng: random.Random, size: int) -> list[Rate]:
    """Return `size` rates with distinct random prefixes of 1-8 digits, a tenth of them with a future version."""
    prefixes: set[str] = set()
    while len(prefixes) < size:
        length = rng.choice((2, 3, 4, 4, 5, 5, 6, 6, 7, 8))
        prefixes.add(str(rng.randint(1, 9)) + "".join(rng.choices("0123456789", k=length - 1)))
    rates = []
    for i, prefix in enumerate(sorted(prefixes)):
        x, y = rng.choice(INCREMENTS)
        rpm = rng.randint(0, 2_000_000)
        fee = rng.choice((0, 0, 0, 10_000, 50_000))
        rates.append(Rate(prefix, f"Destination {i}", rpm, fee, x, y, None))
        if i % 10 == 0:
            rates.append(Rate(prefix, f"Destination {i}", rpm + 1000, fee, x, y, date(2027, 1, 1)))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefixes", type=int, default=50_000)
    parser.add_argument("--calls", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    rates = build_plan(rng, args.prefixes)
    table = PrefixTable(rates)
    print(f"plan: {len(table)} rates, {args.prefixes} prefixes, built in {time.perf_counter() - t0:.2f} s")

    # Most callees start with a known prefix; some match nothing.
    known = [r.prefix for r in rates]
    calls = []
    for _ in range(args.calls):
        head = rng.choice(known) if rng.random() < 0.95 else "0"
        number = head + "".join(rng.choices("0123456789", k=max(1, 12 - len(head))))
        calls.append((number, rng.randint(0, 3600)))
    on = date(2026, 11, 22)

    lookup = table.lookup
    total = 0
    unrated = 0
    t0 = time.perf_counter()
    for number, duration in calls:
        rate = lookup(number, on)
        if rate is None:
            unrated += 1
            continue
        total += cost(rate, duration)
    elapsed = time.perf_counter() - t0
    print(f"rated {len(calls)} CDRs ({unrated} without a rate) in {elapsed:.3f} s: {len(calls) / elapsed:,.0f} CDRs/s")
    print(f"total charged: {total} micro-units")

    t0 = time.perf_counter()
    for number, _ in calls:
        rate = lookup(number, on)
        if rate is not None:
            max_duration(rate, 5_000_000)
    elapsed = time.perf_counter() - t0
    print(f"lookup + max_duration: {len(calls) / elapsed:,.0f} authorisations/s")


if __name__ == "__main__":
    main()
