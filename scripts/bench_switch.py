"""Benchmark the switch API under gunicorn on PostgreSQL (a benchmark, not a test: it prints, it asserts nothing).

What it does, all on 127.0.0.1:
  1. a fresh database credits_bench_switch_<pid> (dropped at the end), migrated with `flask db upgrade`;
     a 50,000-prefix rate plan (generated CSV, `flask rates import`); 10,000 wallets, each with a caller
     number and credit (one made by the account and ledger services, the others set-based copies of its
     rows, so `ledger audit` holds); a switch API key (`flask apikey create`);
  2. the app under gunicorn (gthread, --workers x --threads, started with -p pidfile, stopped by that pid), and
     the same gunicorn command line serving scripts/bench_baseline_app.py (a bare endpoint: one durable UPDATE
     per request); a SEPARATE load process (one thread, one selector loop over keep-alive connections, one
     request in flight on each) drives authorize->complete pairs against the app, or requests against the
     bare endpoint, at fixed concurrency; every response is read whole and checked (status, and the decision
     that leads to the complete);
     after a warm-up of each, --seconds of each are measured in --rounds rounds that alternate the two
     (app, bare; bare, app; ...), so that the ratio compares them under the same conditions on a shared,
     noisy machine; prints calls/s, p50/p99 per endpoint, requests/s of both, the ratio, and the CPU each
     request cost the server (gunicorn workers and this database's PostgreSQL backends) and the load process
     (the load shares the machine's CPUs with the server: it is kept lean), and how each round's connections
     were spread over the gunicorn workers: gunicorn hands a new connection to whichever worker accepts first
     and a kept-alive one stays there, so a round may have 16+0 (one worker, one core of Python, serving all
     of them while the other idles) or 8+8; read the rounds' figures with it;
  3. POST /api/v1/cdrs end to end, batches of 1000, each on a new connection (as an exporter posting its
     files would): gunicorn hands a new connection to whichever worker accepts first, and kept-alive ones
     stay there, so with keep-alive the two senders often shared one worker (one core for both batches'
     Python) for the whole phase, and the figure swung between about 2,000 and 3,800 CDRs/s run to run;
  4. in-process rating (longest-prefix lookup + cost) against the same 50,000-prefix plan.

The concurrency defaults to workers x threads (16): one request in flight per server thread. More requests in
flight than threads only queue in gunicorn; by Little's law the latency is then concurrency / throughput
whatever the server does (at 32 in flight and 800 requests/s, 40 ms on average), and p99 measures the queue.

    .venv/bin/python scripts/bench_switch.py [--seconds 20] [--rounds 4] [--concurrency 16] [--workers 2 --threads 8]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import sqlalchemy as sa  # noqa: E402
from bench_rating import build_plan  # noqa: E402

from credits.rating.engine import PrefixTable, Rate, cost  # noqa: E402

TARGETS = {"calls_s": 400, "p99_ms": 50, "ratio": 0.6, "rating_cdrs_s": 200_000, "cdrs_s": 3_000}
PERSISTENT_TARGETS = {"calls_s": 400, "p99_ms": 50, "ratio": 0.8}
PASSWORD = "bench-password-0123"  # noqa: S105 - throwaway accounts in a throwaway database
CREDIT = "100000.00"  # enough for every call a persistent connection makes on its one wallet
CALLER_BASE = 6580000000  # +65 8xxx xxxx: caller numbers of the bench wallets


# ---------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flask_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"flask {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def mark(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


# ---------------------------------------------------------------- database


def admin_engine(admin_url: str) -> sa.Engine:
    url = admin_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def create_database(admin_url: str, name: str) -> str:
    engine = admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    engine = admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def durability(url: str) -> str:
    engine = admin_engine(url)
    with engine.connect() as conn:
        values = {name: conn.execute(sa.text(f"SHOW {name}")).scalar() for name in ("fsync", "synchronous_commit")}
    engine.dispose()
    return ", ".join(f"{k}={v}" for k, v in values.items())


# ---------------------------------------------------------------- setup


CLONED_TABLES = ("users", "wallets", "caller_numbers", "journal_transactions", "lots", "postings")


def make_wallets(env: dict[str, str], count: int) -> None:
    """Create `count` wallets, each with a caller number and CREDIT, consistent with the ledger.

    The first one is made by the services (accounts.create_account with a phone number, ledger.grant); the
    others are set-based copies of its rows (user, wallet, caller number, grant transaction, lot, postings)
    with fresh ids, emails, blind indexes, account numbers and caller numbers: what the services would
    write, without 20 round trips per wallet.
    """
    os.environ.update(env)
    from credits import config, create_app, crypto, money
    from credits.accounts import service as accounts
    from credits.ledger import service as ledger

    create_app(config.Config.from_env())
    account = accounts.create_account("bench0@example.com", PASSWORD, phone=f"+{CALLER_BASE}")
    ledger.grant(account.wallet.id, money.parse_amount(CREDIT, "USD"), "credit_note", memo="bench")
    engine = admin_engine(env["CREDITS_DATABASE_URL"]).execution_options(isolation_level="READ COMMITTED")
    meta = sa.MetaData()
    meta.reflect(engine, only=CLONED_TABLES)
    users, wallets, numbers, journal, lots, postings = (meta.tables[name] for name in CLONED_TABLES)
    n = count - 1
    with engine.begin() as conn:
        def one(table: sa.Table, where: Any) -> dict[str, Any]:
            return dict(conn.execute(sa.select(table).where(where)).mappings().one())

        def new_ids(table: sa.Table, k: int) -> list[int]:
            return list(conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) "
                                             "FROM generate_series(1, :n)"), {"t": table.name, "n": k}).scalars())

        wallet = one(wallets, wallets.c.id == account.wallet.id)
        user = one(users, users.c.id == wallet["user_id"])
        number = one(numbers, numbers.c.wallet_id == wallet["id"])
        lot = one(lots, lots.c.wallet_id == wallet["id"])
        tx = one(journal, journal.c.id == lot["grant_tx_id"])
        legs = [dict(r) for r in conn.execute(sa.select(postings).where(postings.c.tx_id == tx["id"])).mappings()]
        user_ids, wallet_ids, number_ids = new_ids(users, n), new_ids(wallets, n), new_ids(numbers, n)
        tx_ids, lot_ids, leg_ids = new_ids(journal, n), new_ids(lots, n), new_ids(postings, n * len(legs))
        taken = {wallet["account_number"]}
        account_numbers: list[str] = []
        while len(account_numbers) < n:
            candidate = ledger._new_account_number()
            if candidate not in taken:
                taken.add(candidate)
                account_numbers.append(candidate)
        # Other encrypted columns are bound to the template's row id: leave them empty in the copies.
        blank = {c.name: None for c in users.columns if c.name.endswith("_enc") and c.name != "email_enc"
                 and user[c.name] is not None and c.nullable}
        user_rows, wallet_rows, number_rows, tx_rows, lot_rows, leg_rows = [], [], [], [], [], []
        for i in range(n):
            email = f"bench{i + 1}@example.com"
            uid, wid, lid, tid = user_ids[i], wallet_ids[i], lot_ids[i], tx_ids[i]
            user_rows.append({**user, **blank, "id": uid, "email_bidx": accounts.email_index(email),
                              "email_enc": crypto.encrypt(email, "users", "email_enc", uid)})
            wallet_rows.append({**wallet, "id": wid, "user_id": uid, "account_number": account_numbers[i]})
            phone, nid = f"+{CALLER_BASE + i + 1}", number_ids[i]
            number_row = {**number, "id": nid, "wallet_id": wid}
            # Stored in clear (number) or encrypted with a blind index (number_enc, number_bidx).
            if "number" in number_row:
                number_row["number"] = phone
            if "number_bidx" in number_row:
                number_row["number_bidx"] = crypto.blind_index("phone", phone)
            if "number_enc" in number_row:
                number_row["number_enc"] = crypto.encrypt(phone, "caller_numbers", "number_enc", nid)
            number_rows.append(number_row)
            tx_rows.append({**tx, "id": tid})
            lot_rows.append({**lot, "id": lid, "wallet_id": wid, "grant_tx_id": tid})
            for j, leg in enumerate(legs):
                leg_rows.append({**leg, "id": leg_ids[i * len(legs) + j], "tx_id": tid,
                                 "wallet_id": wid if leg["wallet_id"] is not None else None,
                                 "lot_id": lid if leg["lot_id"] is not None else None})
        for table, rows in ((users, user_rows), (wallets, wallet_rows), (numbers, number_rows), (journal, tx_rows),
                            (lots, lot_rows), (postings, leg_rows)):
            for k in range(0, len(rows), 2000):
                conn.execute(sa.insert(table), rows[k:k + 2000])
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()


def set_database_option(url: str, name: str, setting: str) -> None:
    engine = admin_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" {setting}'))
    engine.dispose()


def setup(env: dict[str, str], args: argparse.Namespace, workdir: Path, rates: list[Rate]) -> str:
    """Migrate, import the plan, create the wallets and the key. The setup's own commits skip the WAL flush
    (synchronous_commit off for this database while it runs; reset before any measurement)."""
    from credits.rating import csv_io

    name = env["CREDITS_DATABASE_URL"].rsplit("/", 1)[1]
    set_database_option(env["CREDITS_DATABASE_URL"], name, "SET synchronous_commit = off")
    t0 = time.perf_counter()
    flask_cli(env, "db", "upgrade")
    log(f"migrated in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    csv_path = workdir / "bench_rates.csv"
    csv_path.write_text(csv_io.export_rates(rates, "USD"))
    log(flask_cli(env, "rates", "import", str(csv_path), "--plan", "default").strip().splitlines()[-1]
        + f" in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    make_wallets(env, args.wallets)
    log(f"{args.wallets} wallets with caller numbers and {CREDIT} credit in {time.perf_counter() - t0:.1f} s "
        "(one through the services, the rest copied set-based)")
    key = flask_cli(env, "apikey", "create", "--name", "bench", "--scope", "switch").strip().splitlines()[-1]
    set_database_option(env["CREDITS_DATABASE_URL"], name, "RESET synchronous_commit")
    return key


def baseline_table(url: str, rows: int) -> None:
    engine = admin_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE bench_baseline (id integer PRIMARY KEY, balance bigint NOT NULL)"))
        conn.execute(sa.text("INSERT INTO bench_baseline SELECT g, 1000000000 FROM generate_series(1, :n) g"),
                     {"n": rows})
        conn.execute(sa.text("VACUUM ANALYZE bench_baseline"))
    engine.dispose()


# ---------------------------------------------------------------- server-side cost per request


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


class CostMeter:
    """CPU seconds of the gunicorn workers and of this database's PostgreSQL backends, and its transactions:
    what a request costs on the server, whatever else the machine is doing."""

    def __init__(self, url: str, master_pid: int) -> None:
        self.engine = admin_engine(url)
        self.db = url.rsplit("/", 1)[1]
        self.master = master_pid

    def snapshot(self) -> dict[str, Any]:
        time.sleep(1.2)  # PostgreSQL publishes its statistics about once a second
        with self.engine.connect() as conn:
            backends: list[int] = list(conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d "
                                                            "AND pid <> pg_backend_pid()"), {"d": self.db}).scalars())
            xacts: int = conn.execute(sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                              "WHERE datname = :d"), {"d": self.db}).scalar_one()
        return {"app": {p: _cpu_seconds(p) for p in [self.master, *_children(self.master)]},
                "db": {p: _cpu_seconds(p) for p in backends}, "xacts": int(xacts)}

    @staticmethod
    def spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """CPU seconds of the app and of PostgreSQL, and transactions, between two snapshots."""
        def cpu(kind: str) -> float:
            was: dict[int, float] = before[kind]
            now: dict[int, float] = after[kind]
            return sum(v - was.get(p, 0.0) for p, v in now.items())

        return {"app": cpu("app"), "db": cpu("db"), "xacts": float(after["xacts"] - before["xacts"])}

    def close(self) -> None:
        self.engine.dispose()


class Totals:
    """One load's phases added up: requests, elapsed time, latencies and server cost."""

    def __init__(self) -> None:
        self.phases: list[dict[str, Any]] = []

    def add(self, phase: dict[str, Any]) -> None:
        self.phases.append(phase)

    @property
    def elapsed(self) -> float:
        return sum(float(p["elapsed"]) for p in self.phases)

    def sum(self, name: str) -> int:
        return sum(int(p.get(name, 0)) for p in self.phases)

    def merged(self, name: str) -> list[float]:
        return sorted(x for p in self.phases for x in p.get(name, []))

    def rates(self) -> list[float]:
        return [p["requests"] / p["elapsed"] for p in self.phases]

    def spreads(self) -> list[str]:
        return ["+".join(map(str, p["probe"])) if p.get("probe") else "?" for p in self.phases]

    def cost(self) -> str:
        n = max(self.sum("requests"), 1)
        app, db = (sum(p["cost"][k] for p in self.phases) * 1000 / n for k in ("app", "db"))
        xacts = sum(p["cost"]["xacts"] for p in self.phases) / n
        loader = sum(p.get("loader_cpu", 0.0) for p in self.phases) * 1000 / n
        return (f"server cost per request: app {app:.2f} ms CPU, PostgreSQL {db:.2f} ms CPU, "
                f"{xacts:.1f} transactions (pool pings count); load process {loader:.2f} ms CPU")


def connections_per_worker(master_pid: int, port: int) -> list[int]:
    """How many established connections to `port` each gunicorn worker holds, most first (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED, server side
                inodes.add(fields[9])
    counts = []
    for pid in _children(master_pid):
        held = 0
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        counts.append(held)
    return sorted(counts, reverse=True)


def measure(url: str, server: Gunicorn, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one load phase against `server`; its summary with the server's cost during it, and how its
    connections were spread over the gunicorn workers (read once, a moment into the phase)."""
    meter = CostMeter(url, server.proc.pid)
    before = meter.snapshot()
    summary = run_load(kind, params, probe=lambda: connections_per_worker(server.proc.pid, server.port))
    summary["cost"] = CostMeter.spent(before, meter.snapshot())
    meter.close()
    return summary


# ---------------------------------------------------------------- gunicorn


class Gunicorn:
    """One gunicorn master started with -p pidfile and stopped by that pid (and only that one)."""

    def __init__(self, app: str, env: dict[str, str], args: argparse.Namespace, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.pidfile = workdir / f"{name}.pid"
        self.logfile = (workdir / f"{name}.log").open("wb")
        # The production configuration (gunicorn.conf.py), with the worker and thread counts the bench was asked
        # for and any extra options (--gunicorn-args, for trying other settings).
        argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "-w", str(args.workers),
                "--threads", str(args.threads), "-b", f"127.0.0.1:{self.port}", "-p", str(self.pidfile),
                "--chdir", str(ROOT), "--pythonpath", str(ROOT / "scripts"), *args.gunicorn_args.split(), app]
        self.command = " ".join(argv[1:]).replace(str(ROOT), ".")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.logfile,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, path: str, method: str = "GET") -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited ({self.proc.returncode}); see {self.logfile.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request(method, path)
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("gunicorn did not answer within 60 s")

    def stop(self) -> None:
        pid = int(self.pidfile.read_text()) if self.pidfile.exists() else self.proc.pid
        if self.proc.poll() is None and pid == self.proc.pid:
            os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.logfile.close()


# ---------------------------------------------------------------- load (runs in its own process)


def _post(conn: http.client.HTTPConnection, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    conn.request("POST", path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data[:1] in (b"{", b"[") else None)


class _Exchange:
    """One keep-alive HTTP/1.1 connection of the load loop: sends a request, collects its response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sent_at = 0.0

    def send(self, request: bytes) -> None:
        self.buffer = b""
        self.sent_at = time.perf_counter()
        self.sock.sendall(request)

    def receive(self) -> tuple[int, bytes] | None:
        """Read what arrived: (status, body) once the whole response is in, else None. A response without a
        Content-Length (chunked) is not expected from these endpoints and raises."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError("a response without Content-Length")
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end > 0 else None])
        body = self.buffer[head_end + 4:]
        if len(body) < length:
            return None
        return int(self.buffer[9:12]), body[:length]


def _http_post(path: str, body: bytes | None, headers: bytes) -> bytes:
    payload = body or b""
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
            + b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


class _SwitchClient:
    """authorize -> complete pairs over this connection's own wallets (one in flight at a time)."""

    def __init__(self, port: int, key: str, callers: list[int], callees: list[str], tag: str) -> None:
        self.link = _Exchange(port)
        self.headers = f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
        self.callers, self.callees, self.tag = callers, callees, tag
        self.rng = random.Random(tag)
        self.auth_ms: list[float] = []
        self.done_ms: list[float] = []
        self.pairs = self.refused = self.errors = self.n = self.reconnects = 0
        self.call_id = ""

    def reset(self) -> None:
        """Forget the figures of the phases before (the persistent mode measures each phase on its own)."""
        self.auth_ms, self.done_ms = [], []
        self.pairs = self.refused = self.errors = self.reconnects = 0

    def start(self, again: bool = False) -> None:
        """Send the next authorize (`again`: a new one, after the connection had to be opened again)."""
        self.n += 1
        self.call_id = f"{self.tag}-{self.n}"
        body = json.dumps({"call_id": self.call_id, "caller": f"+{self.callers[self.n % len(self.callers)]}",
                           "callee": self.rng.choice(self.callees)}).encode()
        self.link.send(_http_post("/api/v1/calls/authorize", body, self.headers))
        self.step = "authorize"

    def answered(self, status: int, body: bytes) -> bool:
        """Handle a whole response; True when a pair (or a refused or failed authorize) is over."""
        elapsed_ms = (time.perf_counter() - self.link.sent_at) * 1000
        if self.step == "authorize":
            self.auth_ms.append(elapsed_ms)
            if status != 200:
                self.errors += 1
                return True
            decision = json.loads(body)
            if not decision["authorized"]:
                self.refused += 1
                return True
            duration = self.rng.randint(0, min(300, decision["max_duration_s"]))
            done = json.dumps({"duration_s": duration, "disposition": "answered" if duration else "no_answer"})
            self.link.send(_http_post(f"/api/v1/calls/{self.call_id}/complete", done.encode(), self.headers))
            self.step = "complete"
            return False
        self.done_ms.append(elapsed_ms)
        if status != 200:
            self.errors += 1
        else:
            self.pairs += 1
        return True


class _BareClient:
    """Requests to the bare endpoint over this connection's own rows."""

    def __init__(self, port: int, ids: list[int]) -> None:
        self.link = _Exchange(port)
        self.ids = ids
        self.latency: list[float] = []
        self.requests = self.errors = self.n = self.reconnects = 0

    def reset(self) -> None:
        self.latency = []
        self.requests = self.errors = self.reconnects = 0

    def start(self, again: bool = False) -> None:
        self.n += 1
        self.link.send(_http_post(f"/debit?id={self.ids[self.n % len(self.ids)]}", None, b""))

    def answered(self, status: int, body: bytes) -> bool:
        self.latency.append((time.perf_counter() - self.link.sent_at) * 1000)
        self.requests += 1
        self.errors += status != 200
        return True


def _drive(clients: list[Any], until: float, keep_open: bool = False) -> None:
    """The load loop: one thread, one selector, every connection one request in flight. A connection starts
    a new pair (or request) only before `until`; one under way finishes. Lean on purpose: the load process
    shares the machine with the server, and each request it handles costs far less CPU than with a thread per
    connection on http.client (measured: about a tenth).

    `keep_open` (the persistent mode): the connections stay open when the phase ends, for the next one; one
    the server closed (its keep-alive timeout ran out between phases) is opened again and counted in the
    client's `reconnects`, and its exchange starts over."""
    import selectors

    sel = selectors.DefaultSelector()
    for client in clients:
        sel.register(client.link.sock, selectors.EVENT_READ, client)
        client.start()
    busy = len(clients)
    while busy:
        for event, _ in sel.select(timeout=60):
            client = event.data
            try:
                response = client.link.receive()
            except ConnectionError:
                if not keep_open or client.link.buffer:
                    raise
                sel.unregister(client.link.sock)
                client.link.sock.close()
                client.link = _Exchange(client.link.port)
                client.reconnects += 1
                sel.register(client.link.sock, selectors.EVENT_READ, client)
                client.start(again=True)
                continue
            if response is None or not client.answered(*response):
                continue
            if time.monotonic() < until:
                client.start()
            else:
                sel.unregister(client.link.sock)
                if not keep_open:
                    client.link.sock.close()
                busy -= 1
    sel.close()


def _cdr_thread(port: int, key: str, until: float, callers: list[int], callees: list[str], tag: str,
                out: dict[str, Any]) -> None:
    """Batches of 1000 CDRs over this sender's own wallets until `until` (the batch in flight finishes), a new
    connection for each (see the module's docstring)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    rng = random.Random(tag)
    answered = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    charged = other = batches = 0
    latencies: list[float] = []
    while time.monotonic() < until:
        batches += 1
        # Sorted by caller: a batch is one transaction locking its wallets in item order.
        first = batches * 1000
        batch: list[dict[str, Any]] = sorted(
            ({"call_id": f"{tag}-{batches}-{j}", "caller": f"+{callers[(first + j) % len(callers)]}",
              "callee": rng.choice(callees), "duration_s": rng.randint(1, 600),
              "answered_at": (answered + timedelta(seconds=j)).isoformat().replace("+00:00", "Z"),
              "disposition": "answered"} for j in range(1000)), key=lambda c: c["caller"])
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            status, body = _post(conn, "/api/v1/cdrs", {"cdrs": batch}, headers)
        finally:
            conn.close()
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            other += len(batch)
            continue
        for result in body["results"]:
            charged += result["status"] == "charged"
            other += result["status"] != "charged"
    out.update(charged=charged, other=other, batch_ms=latencies)


CONNECTED = "connected"


def _clients(kind: str, params: dict[str, Any], per_connection: int | None = None) -> list[Any]:
    """The load's connections: each with its own wallets (callers, or bare rows), `per_connection` of them
    (default: the wallets shared out over the connections)."""
    n = params["concurrency"]

    def share(values: list[int], i: int) -> list[int]:
        return values[i::n] if per_connection is None else values[i * per_connection:][:per_connection]

    if kind == "switch":
        return [_SwitchClient(params["port"], params["key"], share(params["callers"], i), params["callees"],
                              f"{params['tag']}-{i}") for i in range(n)]
    return [_BareClient(params["port"], share(params["ids"], i)) for i in range(n)]


def _summary(kind: str, clients: list[Any]) -> dict[str, Any]:
    if kind == "switch":
        auth = sorted(x for c in clients for x in c.auth_ms)
        done = sorted(x for c in clients for x in c.done_ms)
        return {"pairs": sum(c.pairs for c in clients), "refused": sum(c.refused for c in clients),
                "errors": sum(c.errors for c in clients), "requests": len(auth) + len(done), "auth": auth,
                "complete": done, "reconnects": sum(c.reconnects for c in clients)}
    return {"requests": sum(c.requests for c in clients), "errors": sum(c.errors for c in clients),
            "latency": sorted(x for c in clients for x in c.latency),
            "reconnects": sum(c.reconnects for c in clients)}


def load_process(kind: str, params: dict[str, Any], results: Any) -> None:
    """Entry point of the load process: run `kind`; put CONNECTED on `results` once its connections are open,
    then a summary."""
    started = time.monotonic()
    cpu0 = time.process_time()
    until = started + params.get("seconds", 0)
    n = params["concurrency"]
    summary: dict[str, Any] = {}
    if kind in ("switch", "baseline"):
        clients = _clients(kind, params)
        results.put(CONNECTED)
        _drive(clients, until)
        summary.update(_summary(kind, clients))
    else:
        # Each sender owns the wallets i with i % senders == its number: concurrent batches never wait
        # for each other's wallet locks.
        results.put(CONNECTED)  # (a connection per batch: nothing to probe)
        outs: list[dict[str, Any]] = [{} for _ in range(n)]
        threads = [threading.Thread(target=_cdr_thread, args=(params["port"], params["key"], until,
                                                              params["callers"][i::n], params["callees"],
                                                              f"{params['tag']}-{i}", outs[i]), daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=params.get("seconds", 0) + 600)
        batch_ms = sorted(x for o in outs for x in o.get("batch_ms", []))
        summary.update(charged=sum(o.get("charged", 0) for o in outs), other=sum(o.get("other", 0) for o in outs),
                       batches=len(batch_ms), batch_p50=percentile(batch_ms, 0.5))
    summary.update(elapsed=time.monotonic() - started, loader_cpu=time.process_time() - cpu0)
    results.put(summary)


def run_load(kind: str, params: dict[str, Any], probe: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run `kind` in a separate load process; its summary. `probe`, if given, is called once, a moment after
    the load process has opened its connections, and its answer is the summary's "probe"."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=load_process, args=(kind, params, results))
    proc.start()
    seconds = params.get("seconds", 0)
    if results.get(timeout=120) != CONNECTED:
        raise SystemExit("the load process did not start")
    probed = None
    if probe is not None:
        time.sleep(min(0.2, seconds / 4))
        probed = probe()
    summary: dict[str, Any] = results.get(timeout=seconds + 900)
    proc.join(timeout=60)
    summary["probe"] = probed
    return summary


def persistent_load_process(kind: str, params: dict[str, Any], commands: Any, results: Any) -> None:
    """Entry point of a persistent load process: open every connection at once (one wallet each, as a switch's
    SIP workers each keep one), put CONNECTED, then for each number of seconds received on `commands` drive
    them that long and put that phase's summary; None ends it. The connections stay open from the first phase
    to the last."""
    clients = _clients(kind, params, per_connection=1)
    results.put(CONNECTED)
    while (seconds := commands.get()) is not None:
        for client in clients:
            client.reset()
        started = time.monotonic()
        cpu0 = time.process_time()
        _drive(clients, started + seconds, keep_open=True)
        summary = _summary(kind, clients)
        summary.update(elapsed=time.monotonic() - started, loader_cpu=time.process_time() - cpu0)
        results.put(summary)
    for client in clients:
        client.link.sock.close()


class PersistentLoad:
    """A load process whose connections are opened once, at the same moment, and kept alive for every phase
    (a switch's HTTP client: Kamailio's http_client keeps one connection per SIP worker, an SBC a pool)."""

    def __init__(self, kind: str, params: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.commands, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=persistent_load_process, args=(kind, params, self.commands, self.results))
        self.proc.start()
        if self.results.get(timeout=120) != CONNECTED:
            raise SystemExit("the load process did not start")

    def phase(self, seconds: float, probe: Callable[[], Any] | None = None) -> dict[str, Any]:
        self.commands.put(seconds)
        probed = None
        if probe is not None:
            time.sleep(min(0.2, seconds / 4))
            probed = probe()
        summary: dict[str, Any] = self.results.get(timeout=seconds + 900)
        summary["probe"] = probed
        return summary

    def close(self) -> None:
        self.commands.put(None)
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()


# ---------------------------------------------------------------- in-process rating


def rating_throughput(rates: list[Rate], calls: int, seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    table = PrefixTable(rates)
    known = [r.prefix for r in rates]
    cdrs = []
    for _ in range(calls):
        head = rng.choice(known) if rng.random() < 0.95 else "0"
        cdrs.append((head + "".join(rng.choices("0123456789", k=max(1, 12 - len(head)))), rng.randint(0, 3600)))
    on = date(2026, 11, 22)
    lookup = table.lookup
    t0 = time.perf_counter()
    for number, duration in cdrs:
        rate = lookup(number, on)
        if rate is not None:
            cost(rate, duration)
    return calls, time.perf_counter() - t0


# ---------------------------------------------------------------- main


def callees_for(rates: list[Rate], rng: random.Random, count: int) -> list[str]:
    prefixes = sorted({r.prefix for r in rates})
    return ["+" + p + "".join(rng.choices("0123456789", k=max(1, 11 - len(p)))) for p in rng.sample(prefixes, count)]


def production_setting(name: str) -> Any:
    """A value of gunicorn.conf.py, as gunicorn reads it (the file is Python)."""
    import runpy

    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))[name]


def measure_rounds(args: argparse.Namespace, url: str, server: Gunicorn, bare: Gunicorn, common: dict[str, Any],
                   bare_params: dict[str, Any]) -> tuple[Totals, Totals]:
    """The rounds mode: every phase a new load process with new connections, each over many wallets."""
    run_load("switch", {**common, "seconds": args.warmup, "tag": "warm"})
    run_load("baseline", {**bare_params, "seconds": args.warmup})
    phase_s = args.seconds / args.rounds
    log(f"rounds mode: warmed up; measuring {args.seconds:.0f} s of each at concurrency {args.concurrency}, in "
        f"{args.rounds} rounds of {phase_s:.1f} s (app, bare, then bare, app, ...), new connections each round")
    sw, base = Totals(), Totals()
    for r in range(args.rounds):
        order = ("switch", "baseline") if r % 2 == 0 else ("baseline", "switch")
        for kind in order:
            if kind == "switch":
                sw.add(measure(url, server, "switch", {**common, "seconds": phase_s, "tag": f"run{r}"}))
            else:
                base.add(measure(url, bare, "baseline", {**bare_params, "seconds": phase_s}))
    return sw, base


def measure_persistent(args: argparse.Namespace, url: str, server: Gunicorn, bare: Gunicorn,
                       common: dict[str, Any], bare_params: dict[str, Any]) -> tuple[Totals, Totals]:
    """The persistent mode: N connections to each server opened at once and kept alive for the whole run, each
    driving its own wallet (authorize->complete, a fresh call id per call; the bare endpoint: its own row), in
    alternating rounds."""
    n = args.connections
    offset = args.wallets - 2 * n  # wallets (and bare rows) of their own, not used by the rounds mode's phases
    app_load = PersistentLoad("switch", {**common, "callers": common["callers"][offset:], "concurrency": n,
                                         "tag": "keep"})
    bare_load = PersistentLoad("baseline", {**bare_params, "ids": bare_params["ids"][offset:], "concurrency": n})
    try:
        spread = {"app": connections_per_worker(server.proc.pid, server.port),
                  "bare": connections_per_worker(bare.proc.pid, bare.port)}
        app_load.phase(args.warmup)
        bare_load.phase(args.warmup)
        phase_s = args.seconds / args.rounds
        log(f"persistent mode: {n} connections to each, opened at once, kept alive; connections per worker "
            f"app {'+'.join(map(str, spread['app']))}, bare {'+'.join(map(str, spread['bare']))}; warmed up; "
            f"measuring {args.seconds:.0f} s of each in {args.rounds} rounds of {phase_s:.1f} s")
        sw, base = Totals(), Totals()
        for r in range(args.rounds):
            order = ((app_load, server, sw), (bare_load, bare, base))
            for load, gunicorn, totals in order if r % 2 == 0 else order[::-1]:
                meter = CostMeter(url, gunicorn.proc.pid)
                before = meter.snapshot()
                probe = functools.partial(connections_per_worker, gunicorn.proc.pid, gunicorn.port)
                phase = load.phase(phase_s, probe=probe)
                phase["cost"] = CostMeter.spent(before, meter.snapshot())
                meter.close()
                totals.add(phase)
    finally:
        app_load.close()
        bare_load.close()
    return sw, base


def report(title: str, sw: Totals, base: Totals, targets: dict[str, float]) -> list[str]:
    """The figures of one mode: the switch mix against the bare endpoint."""
    calls_s = sw.sum("pairs") / sw.elapsed
    mix_rps = sw.sum("requests") / sw.elapsed
    base_rps = base.sum("requests") / base.elapsed
    ratio = mix_rps / base_rps if base_rps else 0.0
    auth, done, lat = sw.merged("auth"), sw.merged("complete"), base.merged("latency")
    p99 = {"authorize": percentile(auth, 0.99), "complete": percentile(done, 0.99)}
    lines = [
        title,
        f"  authorize->complete   {calls_s:8,.0f} calls/s (pairs)   target >= {targets['calls_s']:.0f}   "
        f"{mark(calls_s >= targets['calls_s'])}",
    ]
    for name, values in (("authorize", auth), ("complete", done)):
        lines.append(f"    {name:<19} p50 {percentile(values, 0.5):6.1f} ms   p99 {p99[name]:6.1f} ms   "
                     f"p99 target < {targets['p99_ms']:.0f} ms   {mark(p99[name] < targets['p99_ms'])}")
    lines += [
        f"    {sw.sum('pairs'):,} pairs, {sw.sum('requests'):,} requests ({mix_rps:,.0f} req/s), "
        f"{sw.sum('refused')} refused, {sw.sum('errors')} errors, {sw.sum('reconnects')} reconnects",
        f"    {sw.cost()}",
        f"  bare durable UPDATE   {base_rps:8,.0f} req/s   p50 {percentile(lat, 0.5):.1f} ms   "
        f"p99 {percentile(lat, 0.99):.1f} ms   ({base.sum('errors')} errors, {base.sum('reconnects')} reconnects)",
        f"    {base.cost()}",
        "  rounds (req/s app / bare): "
        + ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(sw.rates(), base.rates(), strict=True)),
        "  connections per gunicorn worker (app / bare, each round): "
        + ", ".join(f"{a}/{b}" for a, b in zip(sw.spreads(), base.spreads(), strict=True)),
        f"  ratio (mix req/s / bare req/s)  {ratio:.2f}   target >= {targets['ratio']}   "
        f"{mark(ratio >= targets['ratio'])}",
    ]
    return lines


def main() -> None:  # noqa: PLR0915 - one straight script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("both", "rounds", "persistent"), default="both",
                        help="rounds: new connections each round, over many wallets; persistent: --connections "
                             "kept alive for the whole run, one wallet each; both (default)")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds of each load, per mode")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="rounds mode: requests in flight (default: workers x threads, one per server thread)")
    parser.add_argument("--connections", type=int, default=12,
                        help="persistent mode: kept-alive connections, one request in flight on each (default 12)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="measure in this many rounds, alternating app and bare (default 4)")
    parser.add_argument("--workers", type=int, default=None, help="default: gunicorn.conf.py's")
    parser.add_argument("--threads", type=int, default=None, help="default: gunicorn.conf.py's")
    parser.add_argument("--gunicorn-args", default="",
                        help="more gunicorn options for both servers, e.g. '--no-reuse-port' (to try settings)")
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--prefixes", type=int, default=50_000)
    parser.add_argument("--cdr-seconds", type=float, default=15,
                        help="send batches of 1000 CDRs for this long (the batches in flight finish); 0: skip")
    parser.add_argument("--cdr-concurrency", type=int, default=2)
    parser.add_argument("--admin-url", default=os.environ.get("CREDITS_BENCH_ADMIN_URL",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs (for profiling)")
    args = parser.parse_args()
    if args.workers is None:
        args.workers = int(production_setting("workers"))
    if args.threads is None:
        args.threads = int(production_setting("threads"))
    if args.concurrency is None:
        args.concurrency = args.workers * args.threads

    name = f"credits_bench_switch_{os.getpid()}"
    workdir = ROOT / "instance" / name
    workdir.mkdir(parents=True, exist_ok=True)
    url = create_database(args.admin_url, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env.update(CREDITS_ENV="test", CREDITS_DATABASE_URL=url)
    log(f"database {name}; logs in {workdir.relative_to(ROOT)}")
    rng = random.Random(args.seed)
    rates = build_plan(random.Random(args.seed), args.prefixes)
    server: Gunicorn | None = None
    bare: Gunicorn | None = None
    lines: list[str] = []
    load_before = os.getloadavg()[0]
    try:
        key = setup(env, args, workdir, rates)
        log(f"durability for the measurements: {durability(url)}")
        callers = [CALLER_BASE + i for i in range(args.wallets)]
        callees = callees_for(rates, rng, 2000)

        # ---- authorize -> complete and the bare durable UPDATE, interleaved, in each mode
        baseline_table(url, args.wallets)
        server = Gunicorn("wsgi:app", env, args, workdir, "gunicorn-app")
        server.wait_ready("/healthz")
        log(f"app:      gunicorn {server.command}")
        bare = Gunicorn("bench_baseline_app:app", env, args, workdir, "gunicorn-baseline")
        bare.wait_ready("/debit?id=1", "POST")
        log(f"baseline: gunicorn {bare.command}")
        served = (f"gunicorn -c gunicorn.conf.py ({args.workers} gthread workers x {args.threads} threads"
                  f"{', ' + args.gunicorn_args if args.gunicorn_args else ''}), PostgreSQL, {args.prefixes:,} "
                  f"prefixes, {args.wallets:,} wallets")
        # The rounds mode's phases use wallets 0 .. wallets - 2 x connections; the persistent mode's its own.
        rounds_callers = callers[: args.wallets - 2 * args.connections]
        common = {"port": server.port, "key": key, "callers": rounds_callers, "callees": callees,
                  "concurrency": args.concurrency}
        bare_params = {"port": bare.port, "ids": list(range(1, args.wallets + 1)), "concurrency": args.concurrency}
        if args.mode in ("both", "rounds"):
            sw, base = measure_rounds(args, url, server, bare, common, bare_params)
            lines += ["", *report(f"switch API benchmark, rounds mode: {served}, concurrency {args.concurrency} "
                                  f"(new connections each round, over many wallets), {args.seconds:.0f} s",
                                  sw, base, TARGETS)]
        if args.mode in ("both", "persistent"):
            sw, base = measure_persistent(args, url, server, bare, {**common, "callers": callers}, bare_params)
            lines += ["", *report(f"switch API benchmark, persistent mode: {served}, {args.connections} kept-alive "
                                  f"connections opened at once, one wallet each, {args.seconds:.0f} s",
                                  sw, base, PERSISTENT_TARGETS)]
        bare.stop()

        # ---- batch CDRs
        if args.cdr_seconds > 0:
            cdr = run_load("cdrs", {"port": server.port, "key": key, "callers": rounds_callers, "callees": callees,
                                    "concurrency": args.cdr_concurrency, "seconds": args.cdr_seconds, "tag": "cdr"})
            cdrs_s = cdr["charged"] / cdr["elapsed"]
            lines += [
                "",
                f"  POST /api/v1/cdrs     {cdrs_s:8,.0f} CDRs/s   target >= {TARGETS['cdrs_s']:,}   "
                f"{mark(cdrs_s >= TARGETS['cdrs_s'])}",
                f"    {cdr['charged']:,} charged, {cdr['other']} not, {cdr['batches']} batches of 1000 from "
                f"{args.cdr_concurrency} senders, p50 {cdr['batch_p50'] / 1000:.1f} s per batch",
            ]
        server.stop()
        server = None

        # ---- rating in process
        n, seconds = rating_throughput(rates, 500_000, args.seed)
        rating_s = n / seconds

        audit = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "ledger", "audit"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        lines += [
            f"  rating in process     {rating_s:8,.0f} CDRs/s (lookup + cost, {len(rates):,} rates)   "
            f"target >= {TARGETS['rating_cdrs_s']:,}   {mark(rating_s >= TARGETS['rating_cdrs_s'])}",
            f"  ledger audit: {audit.stdout.strip().splitlines()[-1] if audit.stdout.strip() else audit.stderr[-300:]}",
            f"  machine: {os.cpu_count()} CPUs, load average {load_before:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end (the figures are shared with whatever else runs)",
        ]
    finally:
        for running in (server, bare):
            if running is not None and running.proc.poll() is None:
                running.stop()
        if args.keep:
            log(f"kept database {name}: {url}")
        else:
            drop_database(args.admin_url, name)
            log(f"dropped database {name}")
    print("\n".join(lines), flush=True)
    if lines and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)  # logs stay only after a failure or with --keep


if __name__ == "__main__":
    main()
