"""PostgreSQL fast path of the ledger's reserve and settle: the common case on a raw psycopg connection.

`service.reserve` and `service.settle` are what a switch integration calls per call (DESIGN §3); through the
ORM each spent more CPU building statements than PostgreSQL spent running them. Here:
- reserve is ONE round trip: one autocommitted statement (take the credit if available and no credit is
  due to expire, insert the hold);
- settle is: lock the hold and its wallet, read the open lots (after the lock, so it sees the wallet as it is
  now), one statement of data-modifying CTEs, COMMIT. Plain round trips: psycopg's pipeline mode saves two
  of them but costs more client CPU than they do (measured with scripts/bench_ledger.py).

Same rows and answers as the general path (tests/integration/test_ledger_fastpath.py compares them). Anything
else returns None having written nothing, and the caller takes the general path: replays, holds already
settled, released or expired, credit short or due to expire, and any database error.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from credits import db as db_mod
from credits.ledger.draw import LotState, draw

log = logging.getLogger(__name__)

#: Off: every reserve and settle takes the general path (tests compare the two on PostgreSQL).
ENABLED = True


def active() -> bool:
    return ENABLED and db_mod.get().dialect == "postgresql"


# ---------------------------------------------------------------- settle writes (shared with call charging)

_SETTLE_WRITES: dict[tuple[int, bool, tuple[str, ...]], str] = {}


def settle_writes_sql(lots_drawn: int, shortfall: bool, extra_ctes: tuple[str, ...] = ()) -> str:
    """One statement writing a charge against an active hold: the journal transaction and its postings (lot
    legs, usage_revenue, credit_loss when short), the lots drawn, the hold settled, `extra_ctes`, the wallet.

    Parameters: wallet, hold, now, memo, revenue (the amount charged), charged (taken from lots), shortfall,
    reserved (the hold's amount), next_expiry, lot<i> and part<i>. Built once per shape. Only fixed fragments
    and numbered placeholders go into the text: every value is bound.
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
        "tx AS (INSERT INTO journal_transactions (kind, created_at, memo) VALUES ('settle', %(now)s, %(memo)s) "
        "RETURNING id)",
        "legs AS (INSERT INTO postings (tx_id, wallet_id, lot_id, system_account, amount) "  # noqa: S608
        "SELECT tx.id, v.wallet_id, v.lot_id, v.system_account, v.amount FROM tx, (VALUES "
        + ", ".join(legs) + ") AS v(wallet_id, lot_id, system_account, amount))",
    ]
    if lots_drawn:
        drawn = ", ".join(f"(CAST(%(lot{i})s AS bigint), CAST(%(part{i})s AS bigint))" for i in range(lots_drawn))
        ctes.append("drawn AS (UPDATE lots SET remaining = lots.remaining - d.part FROM (VALUES "  # noqa: S608
                    + drawn + ") AS d(id, part) WHERE lots.id = d.id)")
    ctes.append("hold AS (UPDATE holds SET status = 'settled', finished_at = %(now)s, charged = %(charged)s, "
                "shortfall = %(shortfall)s, tx_id = (SELECT id FROM tx) WHERE id = %(hold)s)")
    ctes.extend(extra_ctes)
    sql = ("WITH " + ", ".join(ctes) + " UPDATE wallets SET balance = balance - %(charged)s, "  # noqa: S608
           "held = held - %(reserved)s, next_expiry_at = %(next_expiry)s WHERE id = %(wallet)s")
    _SETTLE_WRITES[shape] = sql
    return sql


def next_expiry(lots: list[LotState], taken: list[tuple[int, int]]) -> datetime | None:
    left = dict(taken)
    remaining = [lot.expires_at for lot in lots if lot.remaining - left.get(lot.id, 0) > 0]
    return min(remaining) if remaining else None


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
       w.balance, w.held, w.next_expiry_at
FROM wallets w JOIN holds h ON h.wallet_id = w.id
WHERE h.key = %(key)s
FOR UPDATE
"""
_LOTS = """
SELECT json_agg(json_build_array(id, source, remaining, expires_at, created_at)) FROM lots
WHERE wallet_id = (SELECT wallet_id FROM holds WHERE key = %(key)s) AND remaining > 0
"""


def settle(key: str, amount: int, now: datetime, memo: str) -> tuple[Any, ...] | None:
    """Charge `amount` against the active hold `key` (no credit of its wallet due to expire); return
    (hold id, wallet id, hold amount, created_at, expires_at, charged, shortfall), or None (nothing written)
    when the general path must decide."""
    import psycopg

    try:
        with db_mod.raw_transaction() as tx:
            hold = tx.execute(_HOLD, {"key": key}).fetchone()
            lot_rows = tx.execute(_LOTS, {"key": key}).fetchone()
            if hold is None:
                return None
            hold_id, wallet_id, hold_amount, status, created_at, expires_at, charged, balance, held, due = hold
            if status != "active" or charged is not None or (due is not None and due <= now):
                return None
            lots = [lot_from_json(item) for item in (lot_rows[0] if lot_rows else None) or ()]
            eligible = [lot for lot in lots if lot.expires_at > created_at]
            coverable = min(amount, hold_amount + balance - held, sum(lot.remaining for lot in eligible))
            shortfall = amount - coverable
            taken = draw(eligible, coverable)
            params: dict[str, Any] = {
                "wallet": wallet_id, "hold": hold_id, "now": now, "memo": memo[:200], "revenue": amount,
                "charged": coverable, "shortfall": shortfall, "reserved": hold_amount,
                "next_expiry": next_expiry(lots, taken),
            }
            for i, (lot_id, part) in enumerate(taken):
                params[f"lot{i}"], params[f"part{i}"] = lot_id, part
            if amount > 0:
                tx.execute(settle_writes_sql(len(taken), shortfall > 0), params)
            else:
                tx.execute(_SETTLE_NOTHING, params)
            tx.commit()
            return hold_id, wallet_id, hold_amount, created_at, expires_at, coverable, shortfall
    except psycopg.Error as exc:
        log.warning("settle fast path gave way to the general path: %s", type(exc).__name__)
        return None


#: A charge of zero: no journal transaction; the hold is settled for nothing and its credit freed.
_SETTLE_NOTHING = (
    "WITH hold AS (UPDATE holds SET status = 'settled', finished_at = %(now)s, charged = 0, shortfall = 0, "
    "tx_id = NULL WHERE id = %(hold)s) "
    "UPDATE wallets SET held = held - %(reserved)s, next_expiry_at = %(next_expiry)s WHERE id = %(wallet)s"
)
