"""Scheduled jobs: the job table, a single-runner lock per job, and the APScheduler loop of `jobs run`."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, text, update

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
    from credits.ledger import service

    return {"expired_holds": service.sweep_holds()}


_JOBS: dict[str, Job] = {}


def register(name: str, fn: JobFn, every_s: int, doc: str) -> None:
    """Add a job to the table (features call this at import of their jobs module)."""
    _JOBS[name] = Job(name, fn, every_s, doc)


register("expire-lots", _expire_lots, 300, "move the remaining credit of expired lots to breakage")
register("sweep-holds", _sweep_holds, 60, "expire holds whose calls outlived their deadline")


def table() -> dict[str, Job]:
    return dict(_JOBS)


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LockBusy(Exception):
    """Another jobs process is running this job."""


@contextmanager
def job_lock(name: str, *, ttl_s: int = 3600) -> Iterator[None]:
    """Hold the single-runner lock of job `name` for the block; raise LockBusy if another process holds it.

    PostgreSQL: a session advisory lock on a dedicated connection (released if the process dies).
    SQLite: a lock row with an expiry, taken with a conditional UPDATE.
    """
    database = db.get()
    if database.dialect == "postgresql":
        key = zlib.crc32(f"credits-job:{name}".encode())
        with database.engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if not got:
                raise LockBusy(name)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    me = holder_id()
    with db.unit_of_work(database) as uow:
        now = clock.now()
        exists = uow.session.execute(select(JobLock.name).where(JobLock.name == name)).scalar()
        if exists is None:
            uow.session.execute(insert(JobLock).values(name=name, holder=None, locked_until=None))
        taken = uow.session.execute(
            update(JobLock).where(JobLock.name == name)
            .where((JobLock.locked_until.is_(None)) | (JobLock.locked_until < now))
            .values(holder=me, locked_until=now + timedelta(seconds=ttl_s))
        ).rowcount
        uow.commit()
    if not taken:
        raise LockBusy(name)
    try:
        yield
    finally:
        with db.unit_of_work(database) as uow:
            uow.session.execute(
                update(JobLock).where(JobLock.name == name, JobLock.holder == me)
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


def _scheduled(name: str) -> None:
    try:
        result = run_once(name)
        print(f"{name}: {json.dumps(result)}", flush=True)  # noqa: T201 - the operator reads this
    except LockBusy:
        print(f"{name}: skipped, another jobs process is running it", flush=True)  # noqa: T201
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
    print(f"jobs: {', '.join(_JOBS)} (holder {holder_id()})", flush=True)  # noqa: T201
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
