"""Benchmark the ledger hot path on PostgreSQL: reserve+settle pairs/s against a bare durable UPDATE baseline.

    .venv/bin/python scripts/bench_ledger.py [--database-url URL] [--wallets 1000] [--workers 16]
        [--seconds 20] [--mode threads|processes] [--trip-calls 200]
        [--expiry [--lots 1000000] [--expiry-wallets 100000]]

Without --database-url (or CREDITS_DATABASE_URL) a fresh database credits_bench_<pid> is created on
127.0.0.1:5432, migrated (`flask db upgrade`) and dropped at the end.

1. Pairs: M workers each loop over random wallets doing credits.ledger.service.reserve then settle (two
   transactions, exactly what the switch API does per call) for --seconds. Prints pairs/s, p50/p99 of a pair.
2. Baseline: the same M workers, same execution model and engine (credits.db: SQLAlchemy + psycopg, pool),
   each doing `UPDATE bench_baseline SET balance = balance - 1 WHERE id = :id AND balance >= 1` as its own
   durably committed transaction, for the same time. Prints tx/s and the ratio pairs/s ÷ baseline tx/s
   against the target (>= 0.5: ok or BELOW TARGET).
   Next to the ratio: round trips per pair (reserve + settle) and per baseline transaction, counted from
   libpq's protocol trace over --trip-calls calls of each on one thread after the timed phases (every
   ReadyForQuery is one; split into statements, BEGIN/COMMIT, the pool's idle pings and psycopg's prepares);
   and CPU per pair and per baseline transaction, of this process and of the database's PostgreSQL backends
   (threads mode), over the timed phases. Client and server share this machine's CPUs, so the rates go as
   the CPU per operation: the bench says what ratio a pair's PostgreSQL CPU alone would allow.
3. With --expiry: --lots lots (already expired) granted set-based to --expiry-wallets fresh wallets, with a
   balancing journal transaction so that the ledger audit holds; then ONE credits.ledger.service.expire_lots()
   run is timed, and the ledger audit run after it.

This is a benchmark, not a test: the machine is shared and noisy; run it a few times.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RESERVE = 100_000  # 0.10 per call held ...
CHARGE = 60_000  # ... and 0.06 charged
CREDIT = 10_000 * 1_000_000  # per wallet: plenty
TARGET = 0.5  # pairs/s at least half the baseline's transactions/s


# ---------------------------------------------------------------- database lifecycle


def create_database() -> tuple[str, str]:
    name = f"credits_bench_{os.getpid()}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    from credits import db

    if db._db is not None:
        db._db.dispose()
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_config(url: str) -> Any:
    from credits import config

    return config.Config(env="development", database_url=url,
                         secret_key="bench-secret-key-0123456789abcdef0123456789")


def init_app(url: str) -> Any:
    """create_app for `url`: installs the settings and the process-wide engine (pool 10 + overflow 10)."""
    from credits import create_app

    return create_app(make_config(url))


def migrate(url: str) -> None:
    from flask_migrate import upgrade

    from credits import config

    app = init_app(url)
    with app.app_context():
        upgrade(directory=str(config.PROJECT_ROOT / "migrations"))


# ---------------------------------------------------------------- set-based setup


def create_wallets(engine: sa.Engine, n: int, tag: str) -> list[int]:
    """n users with wallets (Core executemany fills the models' Python-side defaults); returns wallet ids."""
    from credits.accounts.models import User
    from credits.ledger.models import Wallet

    now = datetime.now(UTC)
    with engine.begin() as conn:
        rows = [{"email_enc": "", "email_bidx": f"bench-{tag}-{i}", "password_hash": None, "role": "customer",
                 "status": "active", "created_at": now} for i in range(n)]
        for start in range(0, n, 20_000):
            conn.execute(sa.insert(User), rows[start:start + 20_000])
        conn.execute(sa.text(
            "INSERT INTO wallets (user_id, account_number, currency, balance, held, created_at) "
            "SELECT id, (7000000000 + id)::text, 'USD', 0, 0, :now FROM users "
            "WHERE email_bidx LIKE :pattern ORDER BY id"), {"now": now, "pattern": f"bench-{tag}-%"})
        ids: list[int] = list(conn.execute(
            sa.select(Wallet.id).join(User, User.id == Wallet.user_id)
            .where(User.email_bidx.like(f"bench-{tag}-%")).order_by(Wallet.id)
        ).scalars().all())
    return ids


def grant_set_based(engine: sa.Engine, wallet_ids: list[int], lots_per_wallet: int, amount: int,
                    created_at: datetime, expires_at: datetime) -> int:
    """Grant `lots_per_wallet` lots of `amount` to each wallet, set-based but shaped like real grants: one
    journal transaction per wallet with a posting per lot and one balancing gateway_clearing posting; wallet
    balances and next expiry updated. The ledger audit holds. (One journal transaction for everything would
    skew the statistics of postings.tx_id, and the balance trigger's cached plan would scan the table.)"""
    per_wallet = amount * lots_per_wallet
    params = {"ids": wallet_ids, "amount": amount, "per": lots_per_wallet, "total": per_wallet,
              "at": created_at, "exp": expires_at}
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TEMP TABLE bench_grant ON COMMIT DROP AS SELECT w.id AS wallet_id, "
            "nextval(pg_get_serial_sequence('journal_transactions', 'id')) AS tx_id "
            "FROM unnest(CAST(:ids AS bigint[])) AS w(id)"), params)
        conn.execute(sa.text(
            "INSERT INTO journal_transactions (id, kind, created_at, memo) "
            "SELECT tx_id, 'grant', :at, 'bench grant' FROM bench_grant ORDER BY tx_id"), params)
        conn.execute(sa.text(
            "INSERT INTO lots (wallet_id, source, granted, remaining, expires_at, created_at, grant_tx_id) "
            "SELECT g.wallet_id, 'purchase', :amount, :amount, :exp, :at, g.tx_id "
            "FROM bench_grant g, generate_series(1, :per) AS n ORDER BY g.wallet_id, n"), params)
        conn.execute(sa.text(
            "INSERT INTO postings (tx_id, wallet_id, lot_id, amount) "
            "SELECT l.grant_tx_id, l.wallet_id, l.id, l.granted FROM lots l "
            "JOIN bench_grant g ON g.tx_id = l.grant_tx_id ORDER BY l.id"), params)
        conn.execute(sa.text(
            "INSERT INTO postings (tx_id, system_account, amount) "
            "SELECT tx_id, 'gateway_clearing', -CAST(:total AS bigint) FROM bench_grant ORDER BY tx_id"), params)
        conn.execute(sa.text(
            "UPDATE wallets w SET balance = w.balance + CAST(:total AS bigint), "
            "next_expiry_at = least(coalesce(w.next_expiry_at, :exp), :exp) "
            "FROM bench_grant g WHERE w.id = g.wallet_id"), params)
    return per_wallet * len(wallet_ids)


def create_baseline_table(engine: sa.Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS bench_baseline"))
        conn.execute(sa.text("CREATE TABLE bench_baseline (id bigint PRIMARY KEY, balance bigint NOT NULL)"))
        conn.execute(sa.text("INSERT INTO bench_baseline SELECT g, 1000000000 FROM generate_series(1, :n) g"),
                     {"n": n})
    vacuum(engine, "bench_baseline")


def vacuum(engine: sa.Engine, table: str = "") -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"VACUUM ANALYZE {table}"))


# ---------------------------------------------------------------- workers

BASELINE_SQL = sa.text("UPDATE bench_baseline SET balance = balance - 1 WHERE id = :id AND balance >= 1")


def pair_op(wallet_ids: list[int], tag: str) -> Callable[[random.Random, str], None]:
    from credits.ledger import service

    def op(rng: random.Random, n: str) -> None:
        key = f"{tag}-{n}"
        service.reserve(rng.choice(wallet_ids), key, RESERVE)
        service.settle(key, CHARGE)

    return op


def baseline_op(rows: int) -> Callable[[random.Random, str], None]:
    from credits import db

    engine = db.get().engine

    def op(rng: random.Random, n: str) -> None:
        with engine.begin() as conn:
            conn.execute(BASELINE_SQL, {"id": rng.randint(1, rows)})

    return op


def loop(op: Callable[[random.Random, str], None], seed: int, start_at: float, seconds: float) -> list[float]:
    """Run `op` back to back from start_at for `seconds`; return each call's latency in seconds."""
    rng = random.Random(seed)
    latencies: list[float] = []
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    end = start_at + seconds
    i = 0
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            return latencies
        op(rng, f"{seed}-{i}")
        latencies.append(time.monotonic() - t0)
        i += 1


def _process_worker(url: str, kind: str, wallet_ids: list[int], n_baseline: int, tag: str, seed: int,
                    barrier: Any, seconds: float, out: Any) -> None:
    init_app(url)
    op = pair_op(wallet_ids, tag) if kind == "pairs" else baseline_op(n_baseline)
    barrier.wait()
    start_at = time.monotonic() + 0.2
    try:
        cpu0 = time.process_time()
        latencies = loop(op, seed, start_at, seconds)
        out.put((latencies, time.process_time() - cpu0))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        out.put(exc)


def run_phase(kind: str, args: argparse.Namespace, url: str, wallet_ids: list[int], tag: str) -> dict[str, Any]:
    """Run M workers of `kind` (pairs or baseline) for args.seconds; return count, rate, latencies, CPU."""
    from credits import db

    meter = CpuMeter(db.get().engine)
    meter.start()
    results: list[Any] = []
    if args.mode == "threads":
        op = pair_op(wallet_ids, tag) if kind == "pairs" else baseline_op(args.wallets)
        start_at = time.monotonic() + 0.5
        lock = threading.Lock()

        def body(w: int) -> None:
            try:
                r: Any = loop(op, w, start_at, args.seconds)
            except BaseException as exc:  # noqa: BLE001
                r = exc
            with lock:
                results.append(r)

        threads = [threading.Thread(target=body, args=(w,)) for w in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 120)
    else:
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(args.workers)
        out = ctx.Queue()
        procs = [ctx.Process(target=_process_worker, args=(url, kind, wallet_ids, args.wallets, f"{tag}-p{w}", w,
                                                           barrier, args.seconds, out)) for w in range(args.workers)]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                results.append(out.get(timeout=args.seconds + 180))
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
                    p.join(10)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} {kind} worker(s) failed: {errors[0]!r}") from errors[0]
    client_cpu, server_cpu = meter.stop()
    if args.mode == "processes":
        # Each process timed its own loop (not its start-up); its sessions came and went with it.
        client_cpu, server_cpu = sum(cpu for _, cpu in results), None
        results = [lat for lat, _ in results]
    latencies = sorted(x for r in results for x in r)
    return {"count": len(latencies), "rate": len(latencies) / args.seconds, "latencies": latencies,
            "client_cpu": client_cpu, "server_cpu": server_cpu}


class CpuMeter:
    """CPU seconds used by this process (and reaped children) and by the PostgreSQL backends of the bench
    database (read from /proc: the server must run on this machine; otherwise the server part is None).
    On a shared, noisy machine CPU per operation is steadier than wall-clock rates."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.tick = os.sysconf("SC_CLK_TCK")

    def _server(self) -> dict[int, float] | None:
        with self.engine.connect() as conn:
            pids: list[int] = list(conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars().all())
        out: dict[int, float] = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / self.tick
        return out or None

    def _client(self) -> float:
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> None:
        self.c0, self.s0 = self._client(), self._server()

    def stop(self) -> tuple[float, float | None]:
        client = self._client() - self.c0
        s1 = self._server()
        if self.s0 is None or s1 is None:
            return client, None
        return client, sum(v - self.s0.get(pid, 0.0) for pid, v in s1.items())


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def per_op_cpu(phase: dict[str, Any]) -> tuple[float, float] | None:
    """(client, server) CPU milliseconds per operation of a phase, if the server's CPU could be read."""
    if phase["server_cpu"] is None or not phase["count"]:
        return None
    return phase["client_cpu"] * 1000 / phase["count"], phase["server_cpu"] * 1000 / phase["count"]


# ---------------------------------------------------------------- round trips

#: A message in libpq's trace (PQtrace, libpq 14+): direction, length, message type, then its contents (the
#: text of a query may span lines).
TRACE_LINE = re.compile(r"^([FB])\t\d+\t(\w+)\t?(.*)$", re.MULTILINE)
TRANSACTION_CONTROL = ('"BEGIN"', '"COMMIT"', '"ROLLBACK"')


def count_round_trips(engine: sa.Engine, op: Callable[[int], object], n: int) -> dict[str, float] | None:
    """Call op(0..n-1) on this thread with libpq's protocol trace on every pooled connection checked out, and
    return the round trips per call: `total` (one per ReadyForQuery, the server's answer to a simple query or
    a Sync), and of those `control` (BEGIN, COMMIT, ROLLBACK), `ping` (the pool's SELECT 1 at checkout),
    `prepare` (psycopg preparing a statement on a connection: Parse alone) and `statement` (the rest). None
    when libpq cannot trace (psycopg's pure-Python libpq wrapper older than libpq 14)."""
    import psycopg

    if psycopg.pq.version() < 140000:
        return None
    traced: dict[int, tuple[Any, Any, Path]] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench_ledger_trace_"))

    def trace(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if id(dbapi_conn) not in traced:
            path = folder / f"{len(traced)}.txt"
            out = path.open("w")
            dbapi_conn.pgconn.trace(out.fileno())
            dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            traced[id(dbapi_conn)] = (dbapi_conn, out, path)

    counts = dict.fromkeys(("total", "statement", "control", "ping", "prepare"), 0.0)
    sa.event.listen(engine, "checkout", trace, insert=True)  # before the idle ping, so that a ping is seen
    try:
        for i in range(n):
            op(i)
    finally:
        sa.event.remove(engine, "checkout", trace)
        for dbapi_conn, out, path in traced.values():
            dbapi_conn.pgconn.untrace()
            out.close()
            sent: list[tuple[str, str]] = []
            for side, message, text in TRACE_LINE.findall(path.read_text()):
                if side == "F":
                    sent.append((message, text.strip()))
                elif message == "ReadyForQuery" and sent:
                    kinds = {m for m, _ in sent}
                    if any(m == "Query" and t in TRANSACTION_CONTROL for m, t in sent):
                        kind = "control"
                    elif any(m in ("Query", "Parse") and "SELECT 1" in t and len(t) < 20 for m, t in sent):
                        kind = "ping"
                    elif "Parse" in kinds and "Execute" not in kinds:
                        kind = "prepare"
                    else:
                        kind = "statement"
                    counts[kind] += 1
                    counts["total"] += 1
                    sent = []
            path.unlink()
        folder.rmdir()
    return {k: v / n for k, v in counts.items()}


def round_trip_counts(wallet_ids: list[int], tag: str, n: int) -> dict[str, dict[str, float] | None]:
    """Round trips per reserve, per settle and per baseline transaction (count_round_trips, n calls each)."""
    from credits import db
    from credits.ledger import service

    engine = db.get().engine
    rng = random.Random(7)
    baseline = baseline_op(len(wallet_ids))
    key = f"{tag}-rt"

    def reserve(i: int) -> None:
        service.reserve(rng.choice(wallet_ids), f"{key}-{i}", RESERVE)

    return {
        "reserve": count_round_trips(engine, reserve, n),
        "settle": count_round_trips(engine, lambda i: service.settle(f"{key}-{i}", CHARGE), n),
        "baseline": count_round_trips(engine, lambda i: baseline(rng, ""), n),
    }


def trips_text(c: dict[str, float]) -> str:
    parts = [f"{c['statement']:.2f} statements"]
    parts += [f"{c[k]:.2f} {name}" for k, name in (("control", "BEGIN/COMMIT"), ("ping", "pings"),
                                                     ("prepare", "prepares")) if c[k] or k == "control"]
    return f"{c['total']:.2f} ({', '.join(parts)})"


# ---------------------------------------------------------------- expiry


def expiry_bench(args: argparse.Namespace, engine: sa.Engine) -> dict[str, Any]:
    from credits.ledger import service
    from credits.ledger.audit import run_audit

    per = max(1, args.lots // args.expiry_wallets)
    t0 = time.perf_counter()
    ids = create_wallets(engine, args.expiry_wallets, "expiry")
    now = datetime.now(UTC)
    total = grant_set_based(engine, ids, per, 1_000_000, now - timedelta(days=181), now - timedelta(days=1))
    vacuum(engine)
    setup_s = time.perf_counter() - t0
    lots = len(ids) * per
    print(f"expiry setup: {lots:,} expired lots in {len(ids):,} wallets ({total / 1e6:,.0f} USD) "
          f"in {setup_s:.1f} s", flush=True)
    meter = CpuMeter(engine)
    meter.start()
    t0 = time.perf_counter()
    result = service.expire_lots()
    expire_s = time.perf_counter() - t0
    client_cpu, server_cpu = meter.stop()
    print(f"expire_lots: {result}", flush=True)
    ok = result.lots == lots and result.amount == total
    audit_s = None
    audit_ok = None
    if not args.no_audit:
        t0 = time.perf_counter()
        report = run_audit()
        audit_s = time.perf_counter() - t0
        audit_ok = report.ok
        if not report.ok:
            print(report.text())
    return {"lots": lots, "wallets": len(ids), "seconds": expire_s, "result": result, "complete": ok,
            "audit_ok": audit_ok, "audit_s": audit_s, "client_cpu": client_cpu, "server_cpu": server_cpu}


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("CREDITS_DATABASE_URL"))
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--mode", choices=("threads", "processes"), default="threads")
    parser.add_argument("--skip-pairs", action="store_true", help="only the expiry part (with --expiry)")
    parser.add_argument("--expiry", action="store_true", help="also time expire_lots() over --lots expired lots")
    parser.add_argument("--lots", type=int, default=1_000_000)
    parser.add_argument("--expiry-wallets", type=int, default=100_000)
    parser.add_argument("--no-audit", action="store_true", help="skip the ledger audit after expiry")
    parser.add_argument("--trip-calls", type=int, default=200,
                        help="reserves, settles and baseline transactions whose round trips are counted")
    args = parser.parse_args()

    created: str | None = None
    url = args.database_url
    if not url:
        created, url = create_database()
        print(f"database: created {created}", flush=True)
    if not url.startswith(("postgresql", "postgres://")):
        parser.error("this benchmark needs PostgreSQL")
    try:
        if created:
            migrate(url)
        init_app(url)
        from credits import db

        engine = db.get().engine
        tag = f"b{os.getpid()}-{int(time.time())}"
        pairs = baseline = expiry = None
        trips: dict[str, dict[str, float] | None] = {}
        if not args.skip_pairs:
            wallet_ids = create_wallets(engine, args.wallets, tag)
            grant_set_based(engine, wallet_ids, 1, CREDIT, datetime.now(UTC), datetime.now(UTC) + timedelta(days=365))
            create_baseline_table(engine, args.wallets)
            vacuum(engine)
            print(f"pairs: {args.workers} {args.mode}, {len(wallet_ids)} wallets, {args.seconds:g} s ...", flush=True)
            pairs = run_phase("pairs", args, url, wallet_ids, tag)
            print(f"baseline: {args.workers} {args.mode}, {args.seconds:g} s ...", flush=True)
            baseline = run_phase("baseline", args, url, wallet_ids, tag)
            trips = round_trip_counts(wallet_ids, tag, args.trip_calls)
        if args.expiry:
            expiry = expiry_bench(args, engine)
        if pairs is not None and not args.no_audit:
            from credits.ledger.audit import run_audit

            report = run_audit()
            audit_line = "ledger audit after the run: " + ("clean" if report.ok else report.text())
        else:
            audit_line = ""

        print("\n==== bench_ledger results " + "=" * 40)
        print(f"PostgreSQL, {args.workers} {args.mode}, {args.seconds:g} s per phase, {args.wallets} wallets")
        if pairs is not None and baseline is not None:
            lat = pairs["latencies"]
            ratio = pairs["rate"] / baseline["rate"] if baseline["rate"] else float("nan")
            print(f"pairs/s: {pairs['rate']:.0f}  p50: {pct(lat, 50) * 1000:.1f} ms  "
                  f"p99: {pct(lat, 99) * 1000:.1f} ms  ({pairs['count']} pairs)")
            blat = baseline["latencies"]
            print(f"baseline tx/s: {baseline['rate']:.0f}  p50: {pct(blat, 50) * 1000:.1f} ms  "
                  f"p99: {pct(blat, 99) * 1000:.1f} ms")
            verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
            print(f"ratio pairs/s / baseline tx/s: {ratio:.2f}  (target >= {TARGET}: {verdict})")
            rt, st, bt = trips.get("reserve"), trips.get("settle"), trips.get("baseline")
            if rt and st and bt:
                print(f"  round trips per pair: {rt['total'] + st['total']:.2f} = reserve {trips_text(rt)} "
                      f"+ settle {trips_text(st)}")
                print(f"  round trips per baseline tx: {trips_text(bt)}")
            pc, bc = per_op_cpu(pairs), per_op_cpu(baseline)
            if pc and bc:
                print(f"  CPU per pair: {pc[0]:.2f} ms client + {pc[1]:.2f} ms PostgreSQL = {sum(pc):.2f} ms | "
                      f"per baseline tx: {bc[0]:.2f} + {bc[1]:.2f} = {sum(bc):.2f} ms")
                # On a machine where client and server share the CPUs, the rates go as the CPU per operation.
                print(f"  CPU ratio (baseline tx / pair): {sum(bc) / sum(pc):.2f}; a pair's PostgreSQL CPU alone is "
                      f"{pc[1] / sum(bc):.2f} baseline transactions' CPU, so even with no client CPU the ratio "
                      f"would be at most {sum(bc) / pc[1]:.2f}")
            print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            if audit_line:
                print(audit_line)
        if expiry is not None:
            rate = expiry["lots"] / expiry["seconds"] if expiry["seconds"] else float("nan")
            audit = ("skipped" if expiry["audit_ok"] is None
                     else f"{'clean' if expiry['audit_ok'] else 'VIOLATIONS'} ({expiry['audit_s']:.1f} s)")
            if expiry["server_cpu"] is not None:
                print(f"expiry CPU: {expiry['server_cpu']:.1f} s server + {expiry['client_cpu']:.1f} s client "
                      f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
            print(f"expiry: {expiry['lots']:,} lots in {expiry['wallets']:,} wallets expired in "
                  f"{expiry['seconds']:.1f} s  ({rate:,.0f} lots/s; target < 60 s)  "
                  f"complete: {expiry['complete']}  audit: {audit}")
        print("=" * 67)
        return 0
    finally:
        if created:
            drop_database(created)
            print(f"database: dropped {created}")


if __name__ == "__main__":
    sys.exit(main())
