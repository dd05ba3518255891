"""PostgreSQL fast path of the switch's two hot requests, authorize and complete: the common case, in a few
round trips each, on a raw psycopg connection (DESIGN §5; the general path is `credits.calls.service`).

Why: a busy switch sends an authorize and a complete for every call, and through the ORM each of them spent
more CPU building and running statements than the database spent on the work. Here each request is a few
fixed, server-side prepared statements on one connection: lock the wallet, read what the decision needs (after
the lock, so it sees the wallet as it is now), one statement of data-modifying CTEs for every write, COMMIT.
(Plain round trips: psycopg's pipeline mode would save two of them but costs more client CPU than they do.)

Same rows, same answers as the general path: the integration tests run both (SQLite takes the general path,
PostgreSQL this one, and `tests/integration/test_switch_fastpath.py` compares them on PostgreSQL). Anything
out of the common case returns None *before writing*, and the caller takes the general path, which handles
it: replays, calls already completed or abandoned, expired holds, credit due to expire, wallets with a limit
of simultaneous calls, a prefix table not yet loaded in this process, free destinations, and any database
error (the transaction is rolled back first). Refusals are answered here, as the general path would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from credits import config, crypto
from credits import db as db_mod
from credits.ledger import fastpath as ledger_fastpath
from credits.ledger.draw import draw
from credits.rating import engine
from credits.rating.engine import Rate
from credits.rating.service import cached_prefix_table

log = logging.getLogger(__name__)

#: Off: every request takes the general path (tests compare the two on PostgreSQL).
ENABLED = True

DEFAULT_PLAN = "default"


def active() -> bool:
    return ENABLED and db_mod.get().dialect == "postgresql"


# ---------------------------------------------------------------- authorize

_WALLET = """
SELECT w.id, w.balance, w.held, w.currency, w.next_expiry_at, w.max_concurrent_calls, u.status,
       p.id AS plan_id, p.version AS plan_version
FROM wallets w
JOIN users u ON u.id = w.user_id
LEFT JOIN rate_plans p ON p.id = w.rate_plan_id
     OR (w.rate_plan_id IS NULL AND p.name = %(default_plan)s AND p.currency = w.currency)
WHERE {where}
FOR UPDATE OF w
"""
_WALLET_BY_CALLER = _WALLET.format(
    where="w.id = (SELECT wallet_id FROM caller_numbers WHERE number_bidx = %(bidx)s)")
_WALLET_BY_ACCOUNT = _WALLET.format(where="w.account_number = %(account)s")
#: Before a refusal, after the lock (so that it sees a call committed while the lock was awaited): a call_id
#: seen before is answered by the general path. A new call needs no such check: its hold's key is unique
#: (a replay inserts nothing), and a call_id taken by a CDR trips the assertion in _RESERVE.
_SEEN = "SELECT EXISTS (SELECT 1 FROM calls WHERE call_id = %(call_id)s)"

_RESERVE = """
WITH h AS (
    INSERT INTO holds (wallet_id, key, amount, status, created_at, expires_at, shortfall)
    VALUES (%(wallet)s, %(key)s, %(amount)s, 'active', %(now)s, %(deadline)s, 0)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
), w AS (
    UPDATE wallets SET held = held + %(amount)s WHERE id = %(wallet)s AND EXISTS (SELECT 1 FROM h)
), c AS (
    INSERT INTO calls (call_id, wallet_id, hold_id, source, caller, callee, status, authorized_at, max_duration_s,
                       reserved, rate_prefix, rate_destination, rate_per_minute, connect_fee, first_increment_s,
                       next_increment_s, flagged)
    SELECT %(call_id)s, %(wallet)s, h.id, 'switch', %(caller)s, %(callee)s, 'authorized', %(now)s, %(max_d)s,
           %(amount)s, %(prefix)s, %(destination)s, %(rate_per_minute)s, %(connect_fee)s, %(first)s, %(next)s,
           false
    FROM h
    ON CONFLICT (call_id) DO NOTHING
    RETURNING id
)
SELECT (SELECT id FROM h) AS hold_id, (SELECT id FROM c) AS call_row,
       -- An assertion: a hold without its call (the call_id taken by a CDR) divides by zero, and the error
       -- rolls the whole transaction back.
       1 / ((SELECT count(*) FROM c) - (SELECT count(*) FROM h) + 1) AS consistent
"""


@dataclass(frozen=True)
class Authorized:
    max_duration_s: int
    reserved: int
    currency: str
    rate: Rate
    balance: int
    available: int


@dataclass(frozen=True)
class Refused:
    reason: str


_STATUS_REFUSALS = {"closed": "account_closed", "frozen": "account_frozen"}


def authorize(call_id: str, caller: str | None, callee: str, account: str | None,
              now: datetime) -> Authorized | Refused | None:
    """Decide a call in the common case: a new call_id on a wallet with no limit of simultaneous calls and no
    credit due to expire, the plan's prefix table loaded. Authorized (credit reserved) or Refused (unknown
    caller, account frozen or closed, no rate, no credit) as the general path would answer; None when the
    general path must decide (nothing has been written then)."""
    import psycopg

    cfg = config.current()
    params: dict[str, Any] = {"call_id": call_id, "default_plan": DEFAULT_PLAN}
    if account:
        sql, params["account"] = _WALLET_BY_ACCOUNT, account
    else:
        sql, params["bidx"] = _WALLET_BY_CALLER, crypto.blind_index("phone", caller or "")
    try:
        with db_mod.raw_transaction() as tx:
            wallet = tx.execute(sql, params).fetchone()
            if wallet is None:
                return Refused("unknown_caller")

            def refuse(reason: str) -> Refused | None:
                # As the general path: a call_id seen before is answered as it was the first time (it decides).
                seen = tx.execute(_SEEN, {"call_id": call_id}).fetchone()[0]
                return None if seen else Refused(reason)

            wallet_id, balance, held, currency, next_expiry_at, max_calls, status, plan_id, plan_version = wallet
            if status in _STATUS_REFUSALS:
                return refuse(_STATUS_REFUSALS[status])
            if plan_id is None:
                return refuse("no_rate")
            if max_calls or (next_expiry_at is not None and next_expiry_at <= now):
                return None
            table = cached_prefix_table(plan_id, plan_version)
            if table is None:
                return None
            rate = table.lookup(callee.lstrip("+"), now.date())
            if rate is None:
                return refuse("no_rate")
            available = balance - held
            max_d = engine.max_duration(rate, available, cfg.max_call_duration_s)
            if max_d == 0:
                return refuse("insufficient_credit")
            amount = engine.reserve_amount(rate, max_d)
            if amount <= 0:
                return None  # a free destination: the general path tracks it with a token hold
            row = tx.execute(_RESERVE, {
                "wallet": wallet_id, "key": f"call:{call_id}", "amount": amount, "now": now,
                "deadline": now + timedelta(seconds=max_d + cfg.hold_grace_s), "call_id": call_id,
                "caller": caller or "", "callee": callee, "max_d": max_d, "prefix": rate.prefix,
                "destination": rate.destination, "rate_per_minute": rate.rate_per_minute,
                "connect_fee": rate.connect_fee, "first": rate.first_increment_s, "next": rate.next_increment_s,
            }).fetchone()
            tx.commit()
            if row is None or row[0] is None:
                return None  # a replay (the hold's key exists): nothing was written, the general path answers
            return Authorized(max_d, amount, currency, rate, balance, available - amount)
    except psycopg.Error as exc:
        log.warning("authorize fast path gave way to the general path: %s", type(exc).__name__)
        return None


# ---------------------------------------------------------------- complete

_LOCK = """
SELECT id, balance, held, next_expiry_at FROM wallets
WHERE id = (SELECT wallet_id FROM calls WHERE call_id = %(call_id)s)
FOR UPDATE
"""
#: The call, its hold and its wallet's open lots (as JSON: one statement instead of two).
_CALL = """
SELECT c.id, c.status, c.callee, c.flagged, c.flag_reason, c.rate_prefix, c.rate_destination, c.rate_per_minute,
       c.connect_fee, c.first_increment_s, c.next_increment_s,
       h.id, h.amount, h.status, h.created_at,
       (SELECT json_agg(json_build_array(l.id, l.source, l.remaining, l.expires_at, l.created_at))
        FROM lots l WHERE l.wallet_id = c.wallet_id AND l.remaining > 0) AS lots
FROM calls c JOIN holds h ON h.id = c.hold_id
WHERE c.call_id = %(call_id)s
"""

_CALL_DONE = (
    "call AS (UPDATE calls SET status = 'completed', answered_at = %(answered)s, ended_at = %(ended)s, "
    "completed_at = %(now)s, duration_s = %(duration)s, billed_s = %(billed)s, cost = %(cost)s, "
    "charged = %(charged)s, disposition = %(disposition)s, end_reason = %(end_reason)s, flagged = %(flagged)s, "
    "flag_reason = %(flag_reason)s WHERE id = %(call)s)"
)
_RELEASE = (
    "WITH hold AS (UPDATE holds SET status = 'released', finished_at = %(now)s WHERE id = %(hold)s), "  # noqa: S608
    + _CALL_DONE
    + " UPDATE wallets SET held = held - %(reserved)s WHERE id = %(wallet)s"
)
@dataclass(frozen=True)
class Completed:
    charged: int
    billed_s: int
    balance: int
    flagged: bool


def complete(call_id: str, duration_s: int, disposition: str, answered: datetime | None, ended: datetime | None,
             end_reason: str | None, now: datetime) -> Completed | None:
    """Charge a call in progress (authorised, its hold active, no credit due to expire) and store its record;
    None when the general path must decide (nothing has been written then)."""
    import psycopg

    key = {"call_id": call_id}
    try:
        with db_mod.raw_transaction() as tx:
            wallet = tx.execute(_LOCK, key).fetchone()
            call = tx.execute(_CALL, key).fetchone() if wallet is not None else None
            if wallet is None or call is None:
                return None
            wallet_id, balance, held, next_expiry_at = wallet
            (row_id, status, callee, flagged, flag_reason, prefix, destination, per_minute, fee, first, nxt,
             hold_id, hold_amount, hold_status, hold_created_at, lot_rows) = call
            if status != "authorized" or hold_status != "active":
                return None
            if next_expiry_at is not None and next_expiry_at <= now:
                return None
            rate = Rate(prefix, destination, per_minute, fee, first, nxt)
            chargeable = disposition == "answered" and duration_s > 0
            billed = engine.billed_seconds(duration_s, first, nxt) if chargeable else 0
            cost = engine.cost(rate, duration_s) if chargeable else 0
            ended = ended or now
            if answered is None and chargeable:
                answered = ended - timedelta(seconds=duration_s)
            params: dict[str, Any] = {
                "wallet": wallet_id, "hold": hold_id, "call": row_id, "now": now, "reserved": hold_amount,
                "answered": answered, "ended": ended, "duration": duration_s, "billed": billed, "cost": cost,
                "disposition": disposition, "end_reason": end_reason,
            }
            if cost == 0:
                params.update(charged=0, flagged=flagged, flag_reason=flag_reason)
                tx.execute(_RELEASE, params)
                tx.commit()
                return Completed(0, billed, balance, False)
            lots = [ledger_fastpath.lot_from_json(item) for item in lot_rows or ()]
            eligible = [lot for lot in lots if lot.expires_at > hold_created_at]
            coverable = max(0, min(cost, hold_amount + balance - held, sum(lot.remaining for lot in eligible)))
            shortfall = cost - coverable
            taken = draw(eligible, coverable)
            params.update(charged=coverable, shortfall=shortfall, memo=f"call {callee} {billed}s"[:200],
                          revenue=cost, next_expiry=ledger_fastpath.next_expiry(lots, taken),
                          flagged=bool(shortfall) or flagged,
                          flag_reason="credit_shortfall" if shortfall else flag_reason)
            for i, (lot_id, part) in enumerate(taken):
                params[f"lot{i}"], params[f"part{i}"] = lot_id, part
            tx.execute(ledger_fastpath.settle_writes_sql(len(taken), shortfall > 0, (_CALL_DONE,)), params)
            tx.commit()
            return Completed(coverable, billed, balance - coverable, bool(shortfall))
    except psycopg.Error as exc:
        log.warning("complete fast path gave way to the general path: %s", type(exc).__name__)
        return None
