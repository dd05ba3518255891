"""Concurrency on PostgreSQL: many threads on one wallet never overspend; crossed transfers never deadlock.

The services run exactly as in production: each call is its own transaction on the process-wide engine
(pool_size 10 + max_overflow 10), so 32 threads also show that pool waits do no harm. No timing is asserted.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from credits.errors import InsufficientCredit
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit

pytestmark = pytest.mark.postgres

SIZE = 1_000_000  # one reservation
THREADS = 32
WINNERS = 10
JOIN_TIMEOUT_S = 120


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Transfers all happen at the same (frozen) instant: lift the 24-hour limit out of the way.
    return {"transfer_daily_limit": "1000000.00"}


def _run_threads(n: int, target: Any) -> tuple[list[BaseException], threading.Barrier]:
    """Start `n` threads that wait on one barrier and run target(i, barrier); return their errors."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            target(i)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported by the test
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"worker-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a worker thread is stuck"
    return errors, barrier


class Sampler(threading.Thread):
    """Reads balance, held and available of one wallet over and over from its own connection."""

    def __init__(self, engine: sa.Engine, wallet_id: int) -> None:
        super().__init__(name="sampler", daemon=True)
        self.engine, self.wallet_id = engine, wallet_id
        self.stop = threading.Event()
        self.reading = threading.Event()  # set once the first sample is in
        self.samples: list[tuple[int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                while not self.stop.is_set():
                    balance, held = conn.execute(
                        sa.text("SELECT balance, held FROM wallets WHERE id = :id"), {"id": self.wallet_id}
                    ).one()
                    conn.commit()
                    self.samples.append((balance, held))
                    self.reading.set()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self.reading.set()


def test_32_threads_on_one_wallet_exactly_ten_reservations_win(make, database):
    account = make.account(credit=WINNERS * SIZE)
    wallet_id = account.wallet.id
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        key = f"call-{i}"
        try:
            ledger.reserve(wallet_id, key, SIZE)
        except InsufficientCredit:
            with lock:
                outcomes.append("refused")
            return
        ledger.settle(key, SIZE)
        with lock:
            outcomes.append("settled")

    # The sampler has a connection of its own, outside the services' pool (which the 32 workers share).
    sampler_engine = sa.create_engine(database.engine.url, poolclass=NullPool)
    sampler = Sampler(sampler_engine, wallet_id)
    sampler.start()
    try:
        # Its own connection may take a while on a busy host: the workers start once it reads, so it watches
        # them rather than the wallet after they are done.
        assert sampler.reading.wait(60), "the sampler never read the wallet"
        errors, _ = _run_threads(THREADS, worker)
    finally:
        sampler.stop.set()
        sampler.join(30)
        sampler_engine.dispose()

    assert errors == [], f"unexpected errors reached the caller: {errors!r}"
    assert sampler.error is None
    assert sorted(outcomes) == ["refused"] * (THREADS - WINNERS) + ["settled"] * WINNERS
    assert sampler.samples, "the sampler never read the wallet"
    assert all(balance - held >= 0 and held >= 0 for balance, held in sampler.samples), "available went negative"

    view = ledger.balance(wallet_id)
    assert (view.balance, view.held, view.available) == (0, 0, 0)
    with database.engine.connect() as conn:
        holds = conn.execute(sa.text("SELECT status, count(*) FROM holds GROUP BY status")).all()
        # The database itself refuses held > balance (CHECK), and it is in force (validated).
        check = conn.execute(sa.text(
            "SELECT pg_get_constraintdef(oid), convalidated FROM pg_constraint "
            "WHERE conname = 'ck_wallets_available_nonnegative'")).one()
        violating = conn.execute(sa.text("SELECT count(*) FROM wallets WHERE held > balance OR held < 0")).scalar()
    assert dict(holds) == {"settled": WINNERS}
    assert "held <= balance" in check[0] and check[1] is True
    assert violating == 0
    assert ledger.system_balances()["usage_revenue"] == WINNERS * SIZE
    report = run_audit()
    assert report.ok, report.text()


def test_crossed_transfers_never_deadlock_and_conserve_credit(make, database):
    a = make.account(credit=100 * SIZE)
    b = make.account(credit=100 * SIZE)
    ids = (a.wallet.id, b.wallet.id)
    rounds = 12
    done: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        # Even threads send A->B, odd threads B->A: every pair of transactions wants both rows, in both orders.
        src, dst = (ids[0], ids[1]) if i % 2 == 0 else (ids[1], ids[0])
        for _ in range(rounds):
            ledger.transfer(src, dst, SIZE)
            with lock:
                done.append(i)

    errors, _ = _run_threads(16, worker)

    assert errors == [], f"errors reached the caller (deadlock or serialization failure?): {errors!r}"
    assert len(done) == 16 * rounds
    va, vb = ledger.balance(ids[0]), ledger.balance(ids[1])
    assert va.balance + vb.balance == 200 * SIZE
    # Each direction ran the same number of transfers, so both wallets end where they started.
    assert (va.balance, vb.balance) == (100 * SIZE, 100 * SIZE)
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM transfers")).scalar() == 16 * rounds
    report = run_audit()
    assert report.ok, report.text()


def test_parallel_expiry_alongside_calls_keeps_the_ledger_whole(make, clock, database):
    """expire_lots with several workers (tiny batches, so every worker runs many) while calls reserve and
    settle on the same wallets: every due lot is broken exactly once, except what active holds still need."""
    accounts = []
    for _ in range(12):
        account = make.account(credit=5 * SIZE, expires_at=clock.now() + timedelta(hours=1))
        ledger.grant(account.wallet.id, 5 * SIZE, "purchase", expires_at=clock.now() + timedelta(days=30))
        accounts.append(account)
    # Calls authorised before the expiry: their holds keep what they need of the expiring lots.
    for account in accounts[:4]:
        ledger.reserve(account.wallet.id, f"early-{account.wallet.id}", 2 * SIZE, ttl_s=86400)
    clock.advance(hours=2)
    ids = [a.wallet.id for a in accounts]
    stop = threading.Event()

    def caller(i: int) -> None:
        n = 0
        while not stop.is_set() and n < 40:
            key = f"late-{i}-{n}"
            ledger.reserve(ids[(i + n) % len(ids)], key, SIZE // 10)
            ledger.settle(key, SIZE // 20)
            n += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    errors: list[BaseException] = []

    def guarded(t: threading.Thread) -> None:
        try:
            t.run()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    runners = [threading.Thread(target=guarded, args=(t,)) for t in threads]
    for t in runners:
        t.start()
    try:
        result = ledger.expire_lots(batch=2, workers=3)
    finally:
        stop.set()
        for t in runners:
            t.join(JOIN_TIMEOUT_S)
    assert errors == []
    assert result.wallets >= 1
    again = ledger.expire_lots(batch=2, workers=3)
    assert again.amount == 0
    with database.engine.connect() as conn:
        left = conn.execute(sa.text(
            "SELECT coalesce(sum(remaining), 0) FROM lots WHERE expires_at <= :now AND remaining > 0"),
            {"now": clock.now()}).scalar()
        held_early = conn.execute(sa.text(
            "SELECT coalesce(sum(amount), 0) FROM holds WHERE status = 'active' AND key LIKE 'early-%'")).scalar()
    assert left <= held_early  # only what the early calls' holds protect
    balances = sum(ledger.balance(i).balance for i in ids)
    system = ledger.system_balances()
    assert balances + system.get("breakage", 0) + system.get("usage_revenue", 0) == 12 * 10 * SIZE
    report = run_audit()
    assert report.ok, report.text()
