"""PostgreSQL fast path of the switch's two hot requests, authorize and complete: the common case in two
autocommitted statements each, on a raw psycopg connection (DESIGN §5; the general path is
`credits.calls.service`).

Why: a busy switch sends an authorize and a complete for every call, and through the ORM each of them spent
more CPU building and running statements than the database spent on the work. Here each request is:
1. one read (one snapshot): the wallet with its row version (`xmin`), and what the decision needs (owner
   status and plan; or the call, its hold and the wallet's open lots);
2. the decision in Python (rating from the cached prefix table, the draw order of the ledger);
3. one statement of data-modifying CTEs that first updates the wallet only if its row is still the version
   read, and writes everything else only through that update (hold and call record; or journal transaction,
   postings, lots, hold and call record). Every change to a wallet's holds, lots or calls in progress also
   updates the wallet row, so an unchanged version means nothing the decision used has changed; a changed one
   writes nothing and the general path, which locks, decides.
No BEGIN or COMMIT to send: each statement is its own transaction. (Not psycopg's pipeline mode either: it
saved round trips but cost more client CPU than they do.)

Same rows, same answers as the general path: the integration tests run both (SQLite takes the general path,
PostgreSQL this one, and `tests/integration/test_switch_fastpath.py` compares them on PostgreSQL). Anything
out of the common case returns None *having written nothing*, and the caller takes the general path:
replays, calls already completed or abandoned, expired holds, credit due to expire, wallets with a limit of
simultaneous calls, a prefix table not yet loaded in this process, free destinations, a wallet changed between
read and write, and any database error. Refusals are answered here, as the general path would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from credits import config, crypto
from credits import db as db_mod
from credits.ledger import fastpath as ledger_fastpath
from credits.ledger.draw import draw, next_expiry
from credits.rating import engine
from credits.rating.engine import Rate
from credits.rating.models import DEFAULT_PLAN
from credits.rating.service import cached_prefix_table

log = logging.getLogger(__name__)

#: Off: every request takes the general path (tests compare the two on PostgreSQL).
ENABLED = True


def active() -> bool:
    return ENABLED and db_mod.get().dialect == "postgresql"


# ---------------------------------------------------------------- authorize

_WALLET = """
SELECT w.id, w.balance, w.held, w.currency, w.next_expiry_at, w.max_concurrent_calls, w.xmin::text, u.status,
       p.id AS plan_id, p.version AS plan_version,
       EXISTS (SELECT 1 FROM calls WHERE call_id = %(call_id)s) AS seen, {{precheck}}
FROM wallets w
JOIN users u ON u.id = w.user_id
LEFT JOIN rate_plans p ON p.id = w.rate_plan_id
     OR (w.rate_plan_id IS NULL AND p.name = %(default_plan)s AND p.currency = w.currency)
WHERE {where}
"""
_WALLET_BY_CALLER = _WALLET.format(
    where="w.id = (SELECT wallet_id FROM caller_numbers WHERE number_bidx = %(bidx)s)")
_WALLET_BY_ACCOUNT = _WALLET.format(where="w.account_number = %(account)s")


def _with(sql: str, precheck: db_mod.Precheck) -> tuple[str, dict[str, Any]]:
    """The read with the precheck's column last (NULL for none), and the precheck's parameters."""
    return sql.format(precheck=precheck.column), precheck.params

_RESERVE = "WITH " + ledger_fastpath.WALLET_AT_VERSION.format(changes="held = held + %(amount)s") + """,
h AS (
    INSERT INTO holds (wallet_id, key, amount, status, created_at, expires_at, shortfall)
    SELECT w.id, %(key)s, %(amount)s, 'active', %(now)s, %(deadline)s, 0 FROM w
    ON CONFLICT (key) DO NOTHING
    RETURNING id
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
SELECT (SELECT count(*) FROM w), (SELECT id FROM h),
       -- An assertion: credit held without its hold and call (the hold key or the call_id in use: a replay or
       -- a CDR's call_id, both taken since the read) divides by zero, and the error undoes the statement.
       1 / ((SELECT count(*) FROM c) - (SELECT count(*) FROM w) + 1)
"""  # noqa: S608 - a fixed fragment, every value bound


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


def _gave_way(what: str, exc: Exception) -> None:
    import psycopg

    if not isinstance(exc, psycopg.errors.DivisionByZero):  # the assertion: a replay or a race, expected
        log.warning("%s fast path gave way to the general path: %s", what, type(exc).__name__)


def authorize(call_id: str, caller: str | None, callee: str, account: str | None, now: datetime,
              precheck: db_mod.Precheck = db_mod.NO_PRECHECK) -> Authorized | Refused | None:
    """Decide a call in the common case: a new call_id on a wallet with no limit of simultaneous calls and no
    credit due to expire, the plan's prefix table loaded. Authorized (credit reserved) or Refused (unknown
    caller, account frozen or closed, no rate, no credit) as the general path would answer; None when the
    general path must decide (nothing has been written then).

    A `precheck` (the switch's API key) is read with the first statement and judged before anything else;
    what it raises (Unauthorized) propagates, with nothing written.
    """
    import psycopg

    cfg = config.current()
    params: dict[str, Any] = {"call_id": call_id, "default_plan": DEFAULT_PLAN}
    if account:
        sql, params["account"] = _WALLET_BY_ACCOUNT, account
    else:
        sql, params["bidx"] = _WALLET_BY_CALLER, crypto.blind_index("phone", caller or "")
    sql, extra = _with(sql, precheck)
    try:
        with db_mod.raw_transaction(autocommit=True) as tx:
            wallet = tx.execute(sql, {**params, **extra}).fetchone()
            if wallet is None:
                precheck.ensure()
                return Refused("unknown_caller")
            (wallet_id, balance, held, currency, next_expiry_at, max_calls, version, status, plan_id, plan_version,
             seen, checked) = wallet
            precheck.accept(checked)
            if seen:
                return None  # a replay, or a call_id in use: the general path answers it as the first time
            if status in _STATUS_REFUSALS:
                return Refused(_STATUS_REFUSALS[status])
            if plan_id is None:
                return Refused("no_rate")
            if max_calls or (next_expiry_at is not None and next_expiry_at <= now):
                return None
            table = cached_prefix_table(plan_id, plan_version)
            if table is None:
                return None
            rate = table.lookup(callee.lstrip("+"), now.date())
            if rate is None:
                return Refused("no_rate")
            available = balance - held
            max_d = engine.max_duration(rate, available, cfg.max_call_duration_s)
            if max_d == 0:
                return Refused("insufficient_credit")
            amount = engine.reserve_amount(rate, max_d)
            if amount <= 0:
                return None  # a free destination: the general path tracks it with a token hold
            row = tx.execute(_RESERVE, {
                "wallet": wallet_id, "version": version, "key": f"call:{call_id}", "amount": amount, "now": now,
                "deadline": now + timedelta(seconds=max_d + cfg.hold_grace_s), "call_id": call_id,
                "caller": caller or "", "callee": callee, "max_d": max_d, "prefix": rate.prefix,
                "destination": rate.destination, "rate_per_minute": rate.rate_per_minute,
                "connect_fee": rate.connect_fee, "first": rate.first_increment_s, "next": rate.next_increment_s,
            }).fetchone()
            if row is None or row[0] != 1 or row[1] is None:
                return None  # the wallet changed since it was read: nothing was written
            return Authorized(max_d, amount, currency, rate, balance, available - amount)
    except psycopg.Error as exc:
        _gave_way("authorize", exc)
        return None


# ---------------------------------------------------------------- complete

#: The call, its hold, its wallet (with the row's version) and the wallet's open lots, in one snapshot.
_CALL = """
SELECT c.id, c.status, c.callee, c.flagged, c.flag_reason, c.rate_prefix, c.rate_destination, c.rate_per_minute,
       c.connect_fee, c.first_increment_s, c.next_increment_s,
       h.id, h.amount, h.status, h.created_at,
       w.id, w.balance, w.held, w.next_expiry_at, w.xmin::text,
       (SELECT json_agg(json_build_array(l.id, l.source, l.remaining, l.expires_at, l.created_at))
        FROM lots l WHERE l.wallet_id = w.id AND l.remaining > 0) AS lots, {precheck}
FROM calls c JOIN holds h ON h.id = c.hold_id JOIN wallets w ON w.id = c.wallet_id
WHERE c.call_id = %(call_id)s
"""
_CALL_DONE = (
    "call AS (UPDATE calls SET status = 'completed', answered_at = %(answered)s, ended_at = %(ended)s, "
    "completed_at = %(now)s, duration_s = %(duration)s, billed_s = %(billed)s, cost = %(cost)s, "
    "charged = %(charged)s, disposition = %(disposition)s, end_reason = %(end_reason)s, flagged = %(flagged)s, "
    "flag_reason = %(flag_reason)s FROM w WHERE calls.id = %(call)s)"
)
_RELEASE = (
    "WITH " + ledger_fastpath.WALLET_AT_VERSION.format(changes="held = held - %(reserved)s")  # noqa: S608
    + ", hold AS (UPDATE holds SET status = 'released', finished_at = %(now)s FROM w WHERE holds.id = %(hold)s), "
    + _CALL_DONE
    + " SELECT count(*) FROM w"
)


@dataclass(frozen=True)
class Completed:
    charged: int
    billed_s: int
    balance: int
    flagged: bool


def complete(call_id: str, duration_s: int, disposition: str, answered: datetime | None, ended: datetime | None,
             end_reason: str | None, now: datetime, precheck: db_mod.Precheck = db_mod.NO_PRECHECK) -> Completed | None:
    """Charge a call in progress (authorised, its hold active, no credit due to expire) and store its record;
    None when the general path must decide (nothing has been written then). A `precheck` as for authorize."""
    import psycopg

    sql, extra = _with(_CALL, precheck)
    try:
        with db_mod.raw_transaction(autocommit=True) as tx:
            call = tx.execute(sql, {"call_id": call_id, **extra}).fetchone()
            if call is None:
                return None
            (row_id, status, callee, flagged, flag_reason, prefix, destination, per_minute, fee, first, nxt,
             hold_id, hold_amount, hold_status, hold_created_at, wallet_id, balance, held, next_expiry_at, version,
             lot_rows, checked) = call
            precheck.accept(checked)
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
                "wallet": wallet_id, "version": version, "hold": hold_id, "call": row_id, "now": now,
                "reserved": hold_amount, "answered": answered, "ended": ended, "duration": duration_s,
                "billed": billed, "cost": cost, "disposition": disposition, "end_reason": end_reason,
            }
            if cost == 0:
                params.update(charged=0, flagged=flagged, flag_reason=flag_reason)
                if tx.execute(_RELEASE, params).fetchone()[0] != 1:
                    return None  # the wallet changed since it was read: nothing was written
                return Completed(0, billed, balance, False)
            lots = [ledger_fastpath.lot_from_json(item) for item in lot_rows or ()]
            eligible = [lot for lot in lots if lot.expires_at > hold_created_at]
            coverable = max(0, min(cost, hold_amount + balance - held, sum(lot.remaining for lot in eligible)))
            shortfall = cost - coverable
            taken = draw(eligible, coverable)
            params.update(charged=coverable, shortfall=shortfall, memo=f"call {callee} {billed}s"[:200],
                          revenue=cost, next_expiry=next_expiry(lots, taken),
                          flagged=bool(shortfall) or flagged,
                          flag_reason="credit_shortfall" if shortfall else flag_reason)
            for i, (lot_id, part) in enumerate(taken):
                params[f"lot{i}"], params[f"part{i}"] = lot_id, part
            sql = ledger_fastpath.settle_writes_sql(len(taken), shortfall > 0, (_CALL_DONE,))
            if tx.execute(sql, params).fetchone()[0] != 1:
                return None  # the wallet changed since it was read: nothing was written
            return Completed(coverable, billed, balance - coverable, bool(shortfall))
    except psycopg.Error as exc:
        _gave_way("complete", exc)
        return None
