"""Scheduled jobs: the job table, a single-runner lock per job, and the APScheduler loop of `jobs run`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, insert, select, text, update

from credits import clock, config, db
from credits.jobs_models import JobLock, JobRun

log = logging.getLogger(__name__)

JobFn = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Job:
    name: str
    fn: JobFn
    every_s: int
    doc: str


def _expire_lots() -> dict[str, Any]:
    from credits.ledger import service

    r = service.expire_lots()
    return {"wallets": r.wallets, "lots": r.lots, "broken": r.amount}


def _sweep_holds() -> dict[str, Any]:
    from credits.calls.service import mark_abandoned
    from credits.ledger import service

    expired = service.sweep_holds()
    # A call whose hold the sweep expired is over: mark it abandoned (a late complete still charges it).
    return {"expired_holds": expired, "abandoned_calls": mark_abandoned()}


_JOBS: dict[str, Job] = {}


def register(name: str, fn: JobFn, every_s: int, doc: str) -> None:
    """Add a job to the table (features call this at import of their jobs module)."""
    _JOBS[name] = Job(name, fn, every_s, doc)


def _check_payment_pages() -> dict[str, Any]:
    from credits.payments import page_integrity

    return dict(page_integrity.run_job())


register("expire-lots", _expire_lots, 300, "move the remaining credit of expired lots to breakage")
register("sweep-holds", _sweep_holds, 60, "expire holds whose calls outlived their deadline")
register("check-payment-pages", _check_payment_pages, 3600,
         "fingerprint the payment pages (scripts, headers, markup); alert once on a change from the baseline")


def table() -> dict[str, Job]:
    return dict(_JOBS)


def holder_id() -> str:
    """This process: host and pid (what job_runs records)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}"


class LockBusy(Exception):
    """Another jobs process is running this job."""


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key of job `name`: a signed 64-bit hash, namespaced to this service."""
    digest = hashlib.blake2b(f"credits-job:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def job_lock(name: str, *, ttl_s: int = 3600) -> Iterator[None]:
    """Hold the single-runner lock of job `name` for the block; raise LockBusy if another runner holds it.

    PostgreSQL: a session advisory lock on a connection of its own, released when the block ends and in any
    case when that connection closes (so a crashed process never leaves it behind). SQLite: a lock row with
    a lease, see `_row_lock`. Exclusive between processes and between threads of one process.
    """
    database = db.get()
    if database.dialect == "postgresql":
        with _advisory_lock(database, name):
            yield
    else:
        with _row_lock(database, name, ttl_s):
            yield


@contextmanager
def _advisory_lock(database: db.Database, name: str) -> Iterator[None]:
    key = advisory_key(name)
    conn = database.engine.connect()
    try:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
    except BaseException:
        conn.invalidate()
        conn.close()
        raise
    if not got:
        conn.close()
        raise LockBusy(name)
    try:
        yield
    finally:
        released = False
        try:
            released = bool(conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key}).scalar())
            conn.commit()
        except Exception:
            log.exception("could not release the lock of job %s", name)
        finally:
            if not released:
                # A pooled connection that may still hold the lock must not go back to the pool (the next
                # user would re-enter the lock, a session lock being re-entrant): closing it releases it.
                conn.invalidate()
            conn.close()


def _wall_now() -> datetime:
    # Leases are shared between processes: the wall clock, never the injectable (possibly frozen) clock.
    return datetime.now(UTC)


def _holder_is_dead(holder: str | None) -> bool:
    """True when `holder` (host:pid:token) names a process on this host that no longer exists."""
    if not holder:
        return False
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname()[:60] or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


@contextmanager
def _row_lock(database: db.Database, name: str, ttl_s: int) -> Iterator[None]:
    """SQLite: the job's row in job_locks names its holder (host:pid:token, one token per acquisition) and a
    lease. It is free when nobody holds it, the lease ran out, or the holder was a process on this host that
    has died. SQLite serialises writers (BEGIN IMMEDIATE), so the read and the conditional UPDATE are atomic.
    """
    token = f"{holder_id()}:{secrets.token_hex(6)}"
    with db.unit_of_work(database) as uow:
        s = uow.session
        now = _wall_now()
        s.execute(db.insert_for(database.dialect)(JobLock).values(name=name, holder=None, locked_until=None)
                  .on_conflict_do_nothing(index_elements=["name"]))
        current = s.execute(select(JobLock.holder, JobLock.locked_until).where(JobLock.name == name)).one()
        free = JobLock.locked_until.is_(None) | (JobLock.locked_until < now)
        if _holder_is_dead(current.holder):
            log.warning("job %s: taking over the lock of %s, which has exited", name, current.holder)
            free = free | (JobLock.holder == current.holder)
        taken = cast(CursorResult[Any], s.execute(
            update(JobLock).where(JobLock.name == name, free)
            .values(holder=token, locked_until=now + timedelta(seconds=ttl_s))
        )).rowcount
        uow.commit()
    if not taken:
        raise LockBusy(name)
    try:
        yield
    finally:
        with db.unit_of_work(database) as uow:
            uow.session.execute(
                update(JobLock).where(JobLock.name == name, JobLock.holder == token)
                .values(holder=None, locked_until=None)
            )
            uow.commit()


def run_once(name: str) -> dict[str, Any]:
    """Run job `name` under its lock and log the run; return its counts. Raises KeyError, LockBusy, or the
    job's own error (after logging the run as failed)."""
    job = _JOBS[name]
    cfg = config.current()
    with job_lock(name):
        started = clock.now()
        status, result = "ok", {}
        try:
            result = job.fn()
            return result
        except Exception as exc:
            status, result = "failed", {"error": type(exc).__name__}
            raise
        finally:
            if cfg.job_min_runtime_ms:
                time.sleep(cfg.job_min_runtime_ms / 1000)
            with db.unit_of_work() as uow:
                uow.session.execute(insert(JobRun).values(
                    name=name, holder=holder_id(), started_at=started, finished_at=clock.now(), status=status,
                    result=json.dumps(result, default=str)))
                uow.commit()



def _say(line: str) -> None:
    """One line for the operator on stdout, written whole: jobs run on scheduler threads, and print() writes the
    text and its newline separately, so two jobs finishing together could share a line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

def _scheduled(name: str) -> None:
    try:
        result = run_once(name)
        _say(f"{name}: {json.dumps(result)}")
    except LockBusy:
        _say(f"{name}: skipped, another jobs process is running it")
    except Exception:
        log.exception("job %s failed", name)


def run_forever(interval_override_s: int | None = None) -> None:
    """Run every job on its interval until interrupted (the `jobs run` process)."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    scheduler = BlockingScheduler(timezone="UTC")
    start = clock.now() + timedelta(seconds=1)
    for job in _JOBS.values():
        every = interval_override_s or job.every_s
        scheduler.add_job(_scheduled, "interval", args=[job.name], seconds=every, id=job.name,
                          next_run_time=start, coalesce=True, max_instances=1, misfire_grace_time=every)
    _say(f"jobs: {', '.join(_JOBS)} (holder {holder_id()})")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        # Let a running job finish: it releases its lock and records its run.
        if scheduler.running:
            scheduler.shutdown(wait=True)
