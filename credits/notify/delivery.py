"""Deliver the outbox: render each due message, send it through the mailer, retry with back-off, dead-letter.

A message is read in one short transaction, sent outside any transaction (an SMTP round trip must not hold the
database's write lock), and its outcome written in another, conditional on nobody having touched it meanwhile.
Delivery is at least once: if the process dies between the relay's "250 OK" and the write, the message is sent
again on the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, select, update

from credits import clock, config
from credits import logging as logs
from credits.db import unit_of_work
from credits.notify import outbox, render
from credits.notify.mailer import Mailer, MailError, from_config
from credits.notify.models import OutboxMessage

log = logging.getLogger(__name__)
OB: Table = OutboxMessage.__table__  # type: ignore[assignment]


@dataclass
class DeliveryResult:
    sent: int = 0
    retried: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "retried": self.retried, "dead": self.dead}


def backoff(attempts: int, cfg: config.Config | None = None) -> timedelta:
    """Wait before try number `attempts + 1`: the base, doubling per failed try, capped (settings)."""
    cfg = cfg or config.current()
    seconds = min(cfg.mail_retry_base_s * 2 ** max(attempts - 1, 0), cfg.mail_retry_max_s)
    return timedelta(seconds=seconds)


def _due(now: datetime, batch: int) -> list[tuple[int, int]]:
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(OB.c.id, OB.c.attempts).where(OB.c.status == "pending", OB.c.next_attempt_at <= now)
            .order_by(OB.c.next_attempt_at, OB.c.id).limit(batch)
        ).all()
    return [(int(r.id), int(r.attempts)) for r in rows]


def _record(message_id: int, attempts: int, **values: object) -> bool:
    """Write an outcome if the message is still as we read it; False when another runner got there first."""
    with unit_of_work() as uow:
        changed = uow.session.execute(
            update(OB).where(OB.c.id == message_id, OB.c.status == "pending", OB.c.attempts == attempts)
            .values(attempts=attempts + 1, **values)
        ).rowcount  # type: ignore[attr-defined]
        uow.commit()
    return bool(changed)


def _error_text(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    text = f"{type(exc).__name__}{f' {code}' if code else ''}: {exc}"
    return logs.clean(text)[:200]


def deliver_one(message_id: int, attempts: int, mailer: Mailer, cfg: config.Config) -> str:
    """Try message `message_id` once; return "sent", "retried", "dead" or "skipped" (changed meanwhile)."""
    try:
        with unit_of_work() as uow:
            template, to, context = outbox.read(uow.session, message_id)
        rendered = render.render(template, context)
        message = render.compose(rendered, to=to, sender=cfg.mail_from, message_key=f"outbox.{message_id}")
    except Exception as exc:  # noqa: BLE001 - a message that cannot be built will never be: dead-letter it
        log.error("outbox message %s (%s) cannot be built: %s", message_id, _template_of(message_id),
                  type(exc).__name__)
        ok = _record(message_id, attempts, status="dead", last_error=_error_text(exc))
        return "dead" if ok else "skipped"
    try:
        mailer.send(message)
    except MailError as exc:
        now = clock.now()
        tries = attempts + 1
        if exc.permanent or tries >= cfg.mail_max_attempts:
            log.error("outbox message %s (%s) dead after %s tries: %s", message_id, template, tries,
                      _error_text(exc))
            ok = _record(message_id, attempts, status="dead", last_error=_error_text(exc))
            return "dead" if ok else "skipped"
        wait = backoff(tries, cfg)
        log.warning("outbox message %s (%s) try %s failed, next in %ss: %s", message_id, template, tries,
                    int(wait.total_seconds()), _error_text(exc))
        ok = _record(message_id, attempts, next_attempt_at=now + wait, last_error=_error_text(exc))
        return "retried" if ok else "skipped"
    ok = _record(message_id, attempts, status="sent", sent_at=clock.now(), last_error=None)
    log.info("outbox message %s (%s) sent", message_id, template)
    return "sent" if ok else "skipped"


def _template_of(message_id: int) -> str:
    with unit_of_work() as uow:
        return str(uow.session.execute(select(OB.c.template).where(OB.c.id == message_id)).scalar() or "?")


def deliver_due(*, mailer: Mailer | None = None, batch: int = 100) -> DeliveryResult:
    """Send every pending message that is due (up to `batch`); the deliver-outbox job.

    A failure is retried after `backoff` (next_attempt_at); after CREDITS_MAIL_MAX_ATTEMPTS tries, or at once
    when the relay refuses for good (5xx on the recipient or content) or the template cannot render, the
    message is dead (status dead, last_error says why, without the address).
    """
    cfg = config.current()
    mailer = mailer or from_config(cfg)
    result = DeliveryResult()
    for message_id, attempts in _due(clock.now(), batch):
        outcome = deliver_one(message_id, attempts, mailer, cfg)
        if outcome != "skipped":
            setattr(result, outcome, getattr(result, outcome) + 1)
    return result
