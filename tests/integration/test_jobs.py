"""Jobs: `jobs run-once` prints counts and is idempotent; the single-runner lock holds between threads and
between two real `flask --app wsgi jobs run` processes, on SQLite (lock row) and PostgreSQL (advisory lock).

No timing is asserted: the processes run for a few seconds, and the test reads what they recorded in job_runs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from credits import clock as clock_mod
from credits import jobs
from credits.jobs_models import JobRun
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit

ROOT = Path(__file__).resolve().parents[2]
FLASK = Path(sys.executable).with_name("flask")


def _last_json(output: str, name: str) -> dict[str, Any]:
    line = [ln for ln in output.splitlines() if ln.startswith(f"{name}: ")][-1]
    return json.loads(line.removeprefix(f"{name}: "))


def _job_runs(database: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return conn.execute(sa.select(JobRun.name, JobRun.holder, JobRun.started_at, JobRun.finished_at,
                                      JobRun.status).order_by(JobRun.id)).all()


# ---------------------------------------------------------------- jobs run-once (both backends)


def test_run_once_expire_lots_prints_counts_and_second_run_does_nothing(runner, make, clock, database):
    expiring = make.account(credit=5_000_000, expires_at=clock.now() + timedelta(days=1))
    lasting = make.account(credit=7_000_000)
    clock.advance(days=2)

    first = runner.invoke(args=["jobs", "run-once", "expire-lots"])
    assert first.exit_code == 0, first.output
    counts = _last_json(first.output, "expire-lots")
    assert (counts["wallets"], counts["lots"], counts["broken"]) == (1, 1, 5_000_000), counts

    second = runner.invoke(args=["jobs", "run-once", "expire-lots"])
    assert second.exit_code == 0, second.output
    counts = _last_json(second.output, "expire-lots")
    assert (counts["wallets"], counts["lots"], counts["broken"]) == (0, 0, 0) and not any(counts.values()), counts

    assert ledger.balance(expiring.wallet.id).balance == 0
    assert ledger.balance(lasting.wallet.id).balance == 7_000_000
    assert ledger.system_balances()["breakage"] == 5_000_000
    assert [(r.name, r.status) for r in _job_runs(database)] == [("expire-lots", "ok")] * 2
    assert run_audit().ok


def test_run_once_sweep_holds_prints_counts_and_second_run_does_nothing(runner, make, clock, database):
    account = make.account(credit=5_000_000)
    ledger.reserve(account.wallet.id, "call-1", 2_000_000, ttl_s=60)
    ledger.reserve(account.wallet.id, "call-2", 1_000_000, ttl_s=3600)
    clock.advance(minutes=5)

    first = runner.invoke(args=["jobs", "run-once", "sweep-holds"])
    assert first.exit_code == 0, first.output
    assert _last_json(first.output, "sweep-holds")["expired_holds"] == 1
    second = runner.invoke(args=["jobs", "run-once", "sweep-holds"])
    assert second.exit_code == 0, second.output
    counts = _last_json(second.output, "sweep-holds")
    assert counts["expired_holds"] == 0 and not any(counts.values()), counts  # nothing left to do

    view = ledger.balance(account.wallet.id)
    assert (view.balance, view.held) == (5_000_000, 1_000_000)
    assert run_audit().ok


def test_unknown_job_exits_non_zero_and_lists_the_jobs(runner):
    result = runner.invoke(args=["jobs", "run-once", "no-such-job"])
    assert result.exit_code != 0
    assert "no-such-job" in result.output
    for name in jobs.table():
        assert name in result.output


def test_run_once_refuses_while_another_runner_holds_the_lock(runner, database):
    with jobs.job_lock("expire-lots"):
        result = runner.invoke(args=["jobs", "run-once", "expire-lots"])
    assert result.exit_code == 3
    assert "another jobs process is running it" in result.output
    assert _job_runs(database) == []
    # Released: the next run goes ahead.
    assert runner.invoke(args=["jobs", "run-once", "expire-lots"]).exit_code == 0


# ---------------------------------------------------------------- the lock between threads (both backends)


@pytest.mark.parametrize("settings_overrides", [{"job_min_runtime_ms": 30}])
def test_two_threads_never_run_the_same_job_at_once(app, database, monkeypatch):
    state = {"inside": 0, "most": 0, "ran": 0}
    guard = threading.Lock()

    def probe() -> dict[str, Any]:
        with guard:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
            state["ran"] += 1
        time.sleep(0.02)
        with guard:
            state["inside"] -= 1
        return {}

    monkeypatch.setitem(jobs._JOBS, "probe", jobs.Job("probe", probe, 60, "test probe"))
    barrier = threading.Barrier(2)
    busy = [0, 0]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(15):
                try:
                    jobs.run_once("probe")
                except jobs.LockBusy:
                    busy[i] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert state["most"] == 1, "two threads were inside the same job at once"
    assert state["ran"] >= 1 and state["ran"] + sum(busy) == 30
    assert len(_job_runs(database)) == state["ran"]
    with database.engine.connect() as conn:  # nothing left locked
        assert conn.execute(sa.text("SELECT count(*) FROM job_locks WHERE holder IS NOT NULL")).scalar() == 0


# ---------------------------------------------------------------- two real jobs processes (both backends)


def _stop(proc: subprocess.Popen[bytes], how: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its pid, and reap it (never leaves it running)."""
    if proc.poll() is None:
        os.kill(proc.pid, how)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def _locks_held(database: Any, backend: Any, holder: str, app_name: str) -> list[str]:
    """The job locks one jobs process holds right now (SQLite: its lock rows; PostgreSQL: advisory locks of
    its sessions, found by the application_name it connected with)."""
    if backend.is_pg:
        with database.engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT l.objid::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = :app "
                "AND a.datname = current_database()"), {"app": app_name}
            ).scalars())
    # A plain read-only reader: the app's connections begin IMMEDIATE, which would wait for a frozen writer.
    # It may find the database busy (a process frozen while it checkpoints): then say "none" and retry later.
    path = backend.url.removeprefix("sqlite:///")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as conn:
            return [row[0] for row in conn.execute(
                "SELECT name FROM job_locks WHERE holder = ? OR holder LIKE ?", (holder, f"{holder}:%")).fetchall()]
    except sqlite3.OperationalError:
        return []


def _freeze_while_holding(proc: subprocess.Popen[bytes], held: Any, timeout_s: float) -> bool:
    """SIGSTOP `proc` at a moment when it holds a job lock (retrying with SIGCONT); True if caught holding."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        os.kill(proc.pid, signal.SIGSTOP)
        if held():
            return True
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_two_jobs_processes_never_run_the_same_job_at_once(backend, database, tmp_path):
    """Two `jobs run` processes, every job every second, each run held for 0.7 s so that they collide.

    After a few seconds the process that ran more is frozen while it holds a job lock and killed with
    SIGKILL (no clean-up at all): the other one must then take every job over (PostgreSQL ends the dead
    session's advisory lock; on SQLite the lock row of a dead process on this host is free). Then job_runs
    must show no two runs of one job overlapping, and runs by both processes.
    """
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITS_", "PG"))}
    base_env.update(CREDITS_ENV="test", CREDITS_DATABASE_URL=backend.url, CREDITS_JOB_INTERVAL_S="1",
                    CREDITS_JOB_MIN_RUNTIME_MS="700", PYTHONUNBUFFERED="1")
    logs = [tmp_path / "jobs-0.log", tmp_path / "jobs-1.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, path in enumerate(logs):
            env = {**base_env, "PGAPPNAME": f"credits-jobs-test-{i}"}
            with path.open("wb") as out:
                procs.append(subprocess.Popen([str(FLASK), "--app", "wsgi", "jobs", "run"], cwd=ROOT, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
        host = jobs.holder_id().rsplit(":", 1)[0]
        holders = [f"{host}:{p.pid}" for p in procs]

        def runs_by(holder: str, after: Any = None) -> list[str]:
            return [r.name for r in _job_runs(database)
                    if r.holder == holder and (after is None or r.started_at > after)]

        # Both processes up and contending for a few cycles.
        assert _wait_for(lambda: len(_job_runs(database)) >= 8, 60), "the jobs processes ran nothing"
        v = max((0, 1), key=lambda i: len(runs_by(holders[i])))
        victim, survivor = procs[v], procs[1 - v]
        caught = _freeze_while_holding(
            victim, lambda: _locks_held(database, backend, holders[v], f"credits-jobs-test-{v}"), 30)
        assert caught, "never caught the process holding a lock"
        _stop(victim, signal.SIGKILL)
        killed_at = clock_mod.SystemClock().now()
        assert _wait_for(lambda: set(runs_by(holders[1 - v], killed_at)) == set(jobs.table()), 60), \
            "the surviving process did not take every job over"
        _stop(survivor)
        assert survivor.returncode == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            _stop(proc, signal.SIGKILL)
    output = "\n".join(p.read_text(errors="replace") for p in logs)

    runs = _job_runs(database)
    assert {r.status for r in runs} == {"ok"}, output
    assert {r.name for r in runs} == set(jobs.table()), output
    assert {r.holder for r in runs} == set(holders), "both processes should have run jobs"
    for name in jobs.table():
        mine = sorted((r for r in runs if r.name == name), key=lambda r: r.started_at)
        for before, after in zip(mine, mine[1:], strict=False):
            assert before.finished_at <= after.started_at, (
                f"{name}: run of {before.holder} {before.started_at}..{before.finished_at} overlaps run of "
                f"{after.holder} from {after.started_at}\n{output}")
    # They did collide: one process found a job locked by the other at least once.
    assert "skipped, another jobs process is running it" in output, output
