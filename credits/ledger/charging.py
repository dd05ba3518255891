"""Ledger steps for call charging, run inside the caller's transaction on a wallet it has already locked.

Call charging folds reserve and settle into the same statements as its call records, so it cannot use the
one-transaction-each public functions of `service`; these are the building blocks it uses instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from credits.db import insert_for
from credits.ledger.draw import HoldState, LotState, draw, protected_by_holds
from credits.ledger.draw import next_expiry as _next_expiry
from credits.ledger.models import Hold, JournalTransaction, Lot, Posting, Wallet
from credits.ledger.service import _expire_wallet, _new_tx, _open_lots, _post, _take_from_lots

W: Table = Wallet.__table__  # type: ignore[assignment]
H: Table = Hold.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
J: Table = JournalTransaction.__table__  # type: ignore[assignment]
P: Table = Posting.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Funds:
    """A locked wallet's balance and held credit, once expired credit has been broken."""

    id: int
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


def expire_due(session: Session, wallet: Any, now: datetime) -> Funds:
    """Break the expired credit of a locked wallet, if any is due, and return its funds as they now are.

    Expired credit is not available credit, whether or not the expiry job has run: without this, a call could
    be lengthened, or a charge above its hold paid, with credit that is already breakage. What active holds
    made before the expiry still need stays (see `_expire_wallet`). `wallet` is the locked row (id, balance,
    held, next_expiry_at).
    """
    if wallet.next_expiry_at is None or wallet.next_expiry_at > now:
        return Funds(wallet.id, wallet.balance, wallet.held)
    broken = _expire_wallet(session, wallet.id, now)[1]
    return Funds(wallet.id, wallet.balance - broken, wallet.held)


def live_funds(session: Session, wallet: Any, now: datetime) -> Funds:
    """The funds of a wallet, not locked, as `expire_due` would leave them, writing nothing (for answers that
    only read, such as a balance or a quote: credit already expired must not be announced as available)."""
    if wallet.next_expiry_at is None or wallet.next_expiry_at > now:
        return Funds(wallet.id, wallet.balance, wallet.held)
    lots = _open_lots(session, wallet.id)
    holds = session.execute(
        select(H.c.id, H.c.amount, H.c.created_at).where(H.c.wallet_id == wallet.id, H.c.status == "active")
    ).all()
    protected = protected_by_holds(lots, [HoldState(h.id, h.amount, h.created_at) for h in holds])
    expired = sum(max(0, lot.remaining - protected[lot.id]) for lot in lots if lot.expires_at <= now)
    return Funds(wallet.id, wallet.balance - expired, wallet.held)


@dataclass(frozen=True)
class Charge:
    charged: int
    shortfall: int
    tx_id: int | None


def insert_hold(session: Session, wallet_id: int, key: str, amount: int, now: datetime,
                expires_at: datetime) -> int | None:
    """Insert an active hold on a locked wallet whose available credit covers `amount`; bump `held`.

    Returns the hold id, or None when a hold with `key` exists already (a replay: nothing is changed).
    """
    hold_id: int | None = session.execute(
        insert_for(session.get_bind().dialect.name)(H)
        .values(wallet_id=wallet_id, key=key, amount=amount, status="active", created_at=now,
                expires_at=expires_at, shortfall=0)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(H.c.id)
    ).scalar()
    if hold_id is not None:
        session.execute(update(W).where(W.c.id == wallet_id).values(held=W.c.held + amount))
    return hold_id


def resize_hold(session: Session, wallet_id: int, hold_id: int, old_amount: int, new_amount: int,
                expires_at: datetime) -> None:
    """Change an active hold's amount and deadline on a locked wallet (the caller checked available)."""
    session.execute(update(H).where(H.c.id == hold_id).values(amount=new_amount, expires_at=expires_at))
    session.execute(update(W).where(W.c.id == wallet_id).values(held=W.c.held + (new_amount - old_amount)))


def release_hold(session: Session, wallet_id: int, hold: Any, now: datetime) -> None:
    """Release an active hold (nothing charged); a hold in a final state is left alone."""
    if hold.status != "active":
        return
    session.execute(update(H).where(H.c.id == hold.id).values(status="released", finished_at=now))
    session.execute(update(W).where(W.c.id == wallet_id).values(held=W.c.held - hold.amount))


def charge(session: Session, wallet: Any, amount: int, now: datetime, *, hold: Any | None = None,
           since: datetime | None = None, memo: str = "") -> Charge:
    """Charge `amount` to a locked wallet, settling `hold` if given; return what was taken and the shortfall.

    With an active hold: draws from lots that had not expired when the hold was made, releases the hold, and
    may take more than the hold from available credit. With no hold (batch CDRs) or an expired one (a late
    completion): draws from lots live at `since` (default now) out of available credit only. What cannot
    be covered is booked to `credit_loss`. `wallet` is the locked row (balance, held).
    """
    active = hold is not None and hold.status == "active"
    reserved, eligible_since = (hold.amount, hold.created_at) if hold is not None and active else (0, since or now)
    lots = _open_lots(session, wallet.id)
    eligible = [lot for lot in lots if lot.expires_at > eligible_since]
    coverable = max(0, min(amount, reserved + wallet.balance - wallet.held, sum(lot.remaining for lot in eligible)))
    shortfall = amount - coverable
    taken = draw(eligible, coverable)
    tx_id: int | None = None
    if amount > 0:
        tx_id = _new_tx(session, "settle", now, memo=memo[:200])
        legs: list[dict[str, Any]] = [{"wallet_id": wallet.id, "lot_id": i, "amount": -p} for i, p in taken]
        legs.append({"system_account": "usage_revenue", "amount": amount})
        legs.append({"system_account": "credit_loss", "amount": -shortfall})
        _post(session, tx_id, legs)
        _take_from_lots(session, taken)
    if hold is not None:
        session.execute(
            update(H).where(H.c.id == hold.id).values(
                status="settled" if active else hold.status, finished_at=hold.finished_at or now,
                charged=coverable, shortfall=shortfall, tx_id=tx_id)
        )
    session.execute(
        update(W).where(W.c.id == wallet.id).values(
            balance=W.c.balance - coverable, held=W.c.held - reserved, next_expiry_at=_next_expiry(lots, taken))
    )
    return Charge(coverable, shortfall, tx_id)


def bulk_insert(session: Session, table: Table, rows: Sequence[dict[str, Any]], *, returning: Sequence[Any] = (),
                skip_conflicts_on: Sequence[str] = ()) -> list[Row[Any]]:
    """INSERT `rows` (dicts with the same keys) in one statement; return the RETURNING rows, in no set order.

    On PostgreSQL the rows travel as one array per column (`INSERT ... SELECT unnest(...)`), several times
    faster than a VALUES list of thousands of parameters; elsewhere SQLAlchemy's insertmanyvalues. With
    `skip_conflicts_on`, rows that clash on that unique index are skipped (and not returned).
    """
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        columns = list(rows[0])
        arrays = select(*[
            func.unnest(bindparam(f"u_{name}", [row[name] for row in rows],
                                  type_=postgresql.ARRAY(table.c[name].type))).label(name)
            for name in columns
        ])
        stmt: Any = postgresql.insert(table).from_select(columns, arrays)
        params: Any = None
    else:
        stmt, params = insert_for(dialect)(table), list(rows)
    if skip_conflicts_on:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
    if returning:
        return list(session.execute(stmt.returning(*returning), params).all())
    session.execute(stmt, params)
    return []


def bulk_update(session: Session, table: Table, key: str, rows: Sequence[dict[str, Any]], *,
                increments: Sequence[str] = ()) -> None:
    """UPDATE one row per dict, found by its `key` column, to the dict's other values, in one statement; the
    columns named in `increments` are added to (`column = column + value`), the others set.

    On PostgreSQL `UPDATE ... FROM unnest(...)` (one array per column); elsewhere an executemany. The keys must
    be distinct (one row is updated once per statement).
    """
    if not rows:
        return
    columns = [name for name in rows[0] if name != key]

    def assign(name: str, given: Any) -> Any:
        return table.c[name] + given if name in increments else given

    if session.get_bind().dialect.name == "postgresql":
        values = select(*[
            func.unnest(bindparam(f"u_{name}", [row[name] for row in rows],
                                  type_=postgresql.ARRAY(table.c[name].type))).label(name)
            for name in (key, *columns)
        ]).subquery("v")
        session.execute(
            update(table).where(table.c[key] == values.c[key])
            .values({name: assign(name, values.c[name]) for name in columns})
        )
        return
    session.execute(
        update(table).where(table.c[key] == bindparam(f"b_{key}"))
        .values({name: assign(name, bindparam(f"b_{name}")) for name in columns}),
        [{f"b_{name}": value for name, value in row.items()} for row in rows],
    )


@dataclass(frozen=True)
class UsageCharge:
    """One charge without a hold (a call reported only as a CDR): `amount` > 0, paid by lots live at `since`,
    under a unique idempotency `key` (the journal refuses a second charge with it)."""

    wallet_id: int
    amount: int
    since: datetime
    key: str
    memo: str = ""


def charge_many(session: Session, funds: dict[int, Funds], charges: Sequence[UsageCharge],
                now: datetime) -> list[Charge]:
    """Charge each of `charges`, in order, to wallets locked by the caller; return one Charge per item.

    The rule of `charge` without a hold, item by item: each draws from lots live at its `since`, out of
    available credit only, and what cannot be covered is booked to `credit_loss`; one journal transaction
    each. The writes are set-based (a handful of statements whatever the number of charges), so that a
    batch of CDRs costs about what one does. `funds` maps every wallet id named to its funds after
    `expire_due`; they are not updated.
    """
    if not charges:
        return []
    wallet_ids = sorted({c.wallet_id for c in charges})
    rows = session.execute(
        select(L.c.id, L.c.wallet_id, L.c.source, L.c.remaining, L.c.expires_at, L.c.created_at)
        .where(L.c.wallet_id.in_(wallet_ids), L.c.remaining > 0)
    ).all()
    lots: dict[int, list[LotState]] = {w: [] for w in wallet_ids}
    for r in rows:
        lots[r.wallet_id].append(LotState(r.id, r.source, r.remaining, r.expires_at, r.created_at))
    remaining = {lot.id: lot.remaining for wallet_lots in lots.values() for lot in wallet_lots}
    available = {w: funds[w].available for w in wallet_ids}
    spent = dict.fromkeys(wallet_ids, 0)
    planned: list[tuple[UsageCharge, int, list[tuple[int, int]]]] = []
    for c in charges:
        if c.amount <= 0:
            raise ValueError("a usage charge is a positive amount")
        eligible = [replace(lot, remaining=remaining[lot.id]) for lot in lots[c.wallet_id]
                    if lot.expires_at > c.since and remaining[lot.id] > 0]
        coverable = max(0, min(c.amount, available[c.wallet_id], sum(lot.remaining for lot in eligible)))
        taken = draw(eligible, coverable)
        for lot_id, part in taken:
            remaining[lot_id] -= part
        available[c.wallet_id] -= coverable
        spent[c.wallet_id] += coverable
        planned.append((c, coverable, taken))
    # Matched back by key: asking for RETURNING in parameter order makes SQLite insert one row at a time.
    tx_of_key = {r.idempotency_key: r.id for r in bulk_insert(
        session, J,
        [{"kind": "settle", "created_at": now, "idempotency_key": c.key, "memo": c.memo[:200], "actor": None}
         for c in charges],
        returning=(J.c.id, J.c.idempotency_key),
    )}
    tx_ids = [tx_of_key[c.key] for c in charges]
    postings: list[dict[str, Any]] = []
    for tx_id, (c, coverable, taken) in zip(tx_ids, planned, strict=True):
        postings += [{"tx_id": tx_id, "wallet_id": c.wallet_id, "lot_id": lot_id, "system_account": None,
                      "amount": -part} for lot_id, part in taken]
        postings.append({"tx_id": tx_id, "wallet_id": None, "lot_id": None, "system_account": "usage_revenue",
                         "amount": c.amount})
        if c.amount > coverable:
            postings.append({"tx_id": tx_id, "wallet_id": None, "lot_id": None, "system_account": "credit_loss",
                             "amount": coverable - c.amount})
    bulk_insert(session, P, postings)
    drawn = {lot_id: amount - remaining[lot_id] for lot_id, amount in
             ((lot.id, lot.remaining) for wallet_lots in lots.values() for lot in wallet_lots)}
    # One statement each, however many lots and wallets the batch names (the wallets are locked already).
    bulk_update(session, L, "id", [{"id": lot_id, "remaining": -part} for lot_id, part in sorted(drawn.items())
                                   if part], increments=("remaining",))
    bulk_update(session, W, "id", [
        {"id": w, "balance": -spent[w],
         "next_expiry_at": min((lot.expires_at for lot in lots[w] if remaining[lot.id] > 0), default=None)}
        for w in wallet_ids], increments=("balance",))
    return [Charge(coverable, c.amount - coverable, tx_id) for tx_id, (c, coverable, _) in zip(tx_ids, planned,
                                                                                                strict=True)]
