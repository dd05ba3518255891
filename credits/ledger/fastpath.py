"""PostgreSQL fast path of the ledger's reserve and settle: the common case on a raw psycopg connection.

`service.reserve` and `service.settle` are what a switch integration calls per call (DESIGN §3); through the
ORM each spent more CPU building statements than PostgreSQL spent running them. Here each is autocommitted
statements, with no BEGIN or COMMIT to send:
- reserve: ONE statement (take the credit if available and no credit is due to expire, insert the hold);
- settle: read the hold, its wallet (with the row's version, `xmin`) and the wallet's open lots in one
  statement (one snapshot), decide in Python, then ONE statement of data-modifying CTEs that first updates the
  wallet only if its row is still that version, and writes everything else only through that update
  (journal transaction, postings, lots, hold). Optimistic: every change to a wallet's lots or holds also
  updates the wallet row, so an unchanged version means an unchanged wallet; a changed one writes nothing.

Same rows and answers as the general path (tests/integration/test_ledger_fastpath.py compares them). Anything
else returns None having written nothing, and the caller takes the general path (which locks): replays, holds
already settled, released or expired, credit short or due to expire, a wallet changed between the read and
the write, and any database error. (Plain statements rather than psycopg's pipeline mode: the pipeline saved
round trips but cost more client CPU than they do, measured with scripts/bench_ledger.py.)
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from credits import db as db_mod
from credits.ledger.draw import LotState, draw, next_expiry

log = logging.getLogger(__name__)

#: Off: every reserve and settle takes the general path (tests compare the two on PostgreSQL).
ENABLED = True


def active() -> bool:
    return ENABLED and db_mod.get().dialect == "postgresql"


# ---------------------------------------------------------------- settle writes (shared with call charging)

_SETTLE_WRITES: dict[tuple[int, bool, tuple[str, ...]], str] = {}


def settle_writes_sql(lots_drawn: int, shortfall: bool, extra_ctes: tuple[str, ...] = ()) -> str:
    """One statement writing a charge against an active hold, if the wallet row is still at the version read
    (`xmin`): the wallet, then through it the journal transaction and its postings (lot legs, usage_revenue,
    credit_loss when short), the lots drawn, the hold settled and `extra_ctes` (which must join `w` too).
    Answers the number of wallets updated: 0 means the wallet changed and nothing was written.

    Parameters: wallet, version, hold, now, memo, revenue (the amount charged), charged (taken from lots),
    shortfall, reserved (the hold's amount), next_expiry, lot<i> and part<i>. Built once per shape. Only fixed
    fragments and numbered placeholders go into the text: every value is bound.
    """
    shape = (lots_drawn, shortfall, extra_ctes)
    sql = _SETTLE_WRITES.get(shape)
    if sql is not None:
        return sql
    legs = [f"(CAST(%(wallet)s AS bigint), CAST(%(lot{i})s AS bigint), CAST(NULL AS varchar), "
            f"-CAST(%(part{i})s AS bigint))" for i in range(lots_drawn)]
    legs.append("(CAST(NULL AS bigint), CAST(NULL AS bigint), CAST('usage_revenue' AS varchar), "
                "CAST(%(revenue)s AS bigint))")
    if shortfall:
        legs.append("(CAST(NULL AS bigint), CAST(NULL AS bigint), CAST('credit_loss' AS varchar), "
                    "-CAST(%(shortfall)s AS bigint))")
    ctes = [
        WALLET_AT_VERSION.format(changes="balance = balance - %(charged)s, held = held - %(reserved)s, "
                                         "next_expiry_at = %(next_expiry)s"),
        "tx AS (INSERT INTO journal_transactions (kind, created_at, memo) SELECT 'settle', %(now)s, %(memo)s "
        "FROM w RETURNING id)",
        "legs AS (INSERT INTO postings (tx_id, wallet_id, lot_id, system_account, amount) "  # noqa: S608
        "SELECT tx.id, v.wallet_id, v.lot_id, v.system_account, v.amount FROM tx, (VALUES "
        + ", ".join(legs) + ") AS v(wallet_id, lot_id, system_account, amount))",
    ]
    if lots_drawn:
        drawn = ", ".join(f"(CAST(%(lot{i})s AS bigint), CAST(%(part{i})s AS bigint))" for i in range(lots_drawn))
        ctes.append("drawn AS (UPDATE lots SET remaining = lots.remaining - d.part FROM (VALUES "  # noqa: S608
                    + drawn + ") AS d(id, part), w WHERE lots.id = d.id)")
    ctes.append("hold AS (UPDATE holds SET status = 'settled', finished_at = %(now)s, charged = %(charged)s, "
                "shortfall = %(shortfall)s, tx_id = (SELECT id FROM tx) FROM w WHERE holds.id = %(hold)s)")
    ctes.extend(extra_ctes)
    sql = "WITH " + ", ".join(ctes) + " SELECT count(*) FROM w"  # noqa: S608
    _SETTLE_WRITES[shape] = sql
    return sql


#: The first CTE of every optimistic write: the wallet updated only if its row is still the version read.
#: (PostgreSQL re-checks the condition on the row's latest version once any concurrent writer is done.)
WALLET_AT_VERSION = ("w AS (UPDATE wallets SET {changes} WHERE id = %(wallet)s AND xmin = CAST(%(version)s AS xid) "
                     "RETURNING id)")


def lot_from_json(item: list[Any]) -> LotState:
    """A lot read as a JSON array [id, source, remaining, expires_at, created_at] (json_build_array)."""
    lot_id, source, remaining, expires_at, created_at = item
    return LotState(lot_id, source, remaining, datetime.fromisoformat(expires_at), datetime.fromisoformat(created_at))


# ---------------------------------------------------------------- reserve

_RESERVE = """
WITH took AS (
    UPDATE wallets SET held = held + %(amount)s
    WHERE {where} AND balance - held >= %(amount)s AND (next_expiry_at IS NULL OR next_expiry_at > %(now)s)
      AND NOT EXISTS (SELECT 1 FROM holds WHERE key = %(key)s)  -- a replay takes nothing: the general path answers
    RETURNING id
), hold AS (
    INSERT INTO holds (wallet_id, key, amount, status, created_at, expires_at, shortfall)
    SELECT id, %(key)s, %(amount)s, 'active', %(now)s, %(expires)s, 0 FROM took
    ON CONFLICT (key) DO NOTHING
    RETURNING id, wallet_id
)
SELECT (SELECT id FROM hold), (SELECT wallet_id FROM hold),
       -- An assertion: credit taken without its hold (the same key reserved at this very moment by another
       -- transaction) divides by zero, and the error undoes the whole statement.
       1 / ((SELECT count(*) FROM hold) - (SELECT count(*) FROM took) + 1)
"""
_RESERVE_BY_ID = _RESERVE.format(where="id = %(wallet)s")
_RESERVE_BY_NUMBER = _RESERVE.format(where="account_number = %(account)s")


def reserve(account: str | int, key: str, amount: int, now: datetime, expires_at: datetime) -> tuple[int, int] | None:
    """Hold `amount` of a wallet with that much available and no credit due to expire: (hold id, wallet id);
    None (nothing written) otherwise, or when `key` was used before."""
    import psycopg

    params: dict[str, Any] = {"amount": amount, "now": now, "key": key, "expires": expires_at}
    if isinstance(account, int):
        sql, params["wallet"] = _RESERVE_BY_ID, account
    else:
        sql, params["account"] = _RESERVE_BY_NUMBER, account
    try:
        # One statement, autocommitted: it is its own transaction (no BEGIN, no COMMIT to send), and an error
        # in it (the assertion) leaves nothing behind.
        with db_mod.raw_transaction(autocommit=True) as tx:
            row = tx.execute(sql, params).fetchone()
    except psycopg.Error as exc:
        if not isinstance(exc, psycopg.errors.DivisionByZero):
            log.warning("reserve fast path gave way to the general path: %s", type(exc).__name__)
        return None
    if row is None or row[0] is None:
        return None
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------- settle

_HOLD = """
SELECT h.id, h.wallet_id, h.amount, h.status, h.created_at, h.expires_at, h.charged,
       w.balance, w.held, w.next_expiry_at, w.xmin::text,
       (SELECT json_agg(json_build_array(l.id, l.source, l.remaining, l.expires_at, l.created_at))
        FROM lots l WHERE l.wallet_id = w.id AND l.remaining > 0)
FROM holds h JOIN wallets w ON w.id = h.wallet_id
WHERE h.key = %(key)s
"""


def settle(key: str, amount: int, now: datetime, memo: str) -> tuple[Any, ...] | None:
    """Charge `amount` against the active hold `key` (no credit of its wallet due to expire); return
    (hold id, wallet id, hold amount, created_at, expires_at, charged, shortfall), or None (nothing written)
    when the general path must decide."""
    import psycopg

    try:
        with db_mod.raw_transaction(autocommit=True) as tx:
            hold = tx.execute(_HOLD, {"key": key}).fetchone()
            if hold is None:
                return None
            (hold_id, wallet_id, hold_amount, status, created_at, expires_at, charged, balance, held, due, version,
             lot_rows) = hold
            if status != "active" or charged is not None or (due is not None and due <= now):
                return None
            lots = [lot_from_json(item) for item in lot_rows or ()]
            eligible = [lot for lot in lots if lot.expires_at > created_at]
            coverable = min(amount, hold_amount + balance - held, sum(lot.remaining for lot in eligible))
            shortfall = amount - coverable
            taken = draw(eligible, coverable)
            params: dict[str, Any] = {
                "wallet": wallet_id, "version": version, "hold": hold_id, "now": now, "memo": memo[:200],
                "revenue": amount, "charged": coverable, "shortfall": shortfall, "reserved": hold_amount,
                "next_expiry": next_expiry(lots, taken),
            }
            for i, (lot_id, part) in enumerate(taken):
                params[f"lot{i}"], params[f"part{i}"] = lot_id, part
            sql = settle_writes_sql(len(taken), shortfall > 0) if amount > 0 else _SETTLE_NOTHING
            if tx.execute(sql, params).fetchone()[0] != 1:
                return None  # the wallet changed since it was read: nothing was written
            return hold_id, wallet_id, hold_amount, created_at, expires_at, coverable, shortfall
    except psycopg.Error as exc:
        log.warning("settle fast path gave way to the general path: %s", type(exc).__name__)
        return None


#: A charge of zero: no journal transaction; the hold is settled for nothing and its credit freed.
_SETTLE_NOTHING = (
    "WITH " + WALLET_AT_VERSION.format(changes="held = held - %(reserved)s, next_expiry_at = %(next_expiry)s")  # noqa: S608
    + ", hold AS (UPDATE holds SET status = 'settled', finished_at = %(now)s, charged = 0, shortfall = 0, "
    "tx_id = NULL FROM w WHERE holds.id = %(hold)s) SELECT count(*) FROM w"
)
