"""Ledger steps for payment corrections: restore a failed refund's debit, write off disputed credit.

Like `charging`, these run inside the caller's transaction (the payments service records its own rows in the
same one) and are built from the private helpers of `service`: every read-then-write locks the wallet first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from credits.errors import Conflict, IdempotencyConflict, NotFound
from credits.ledger.draw import draw
from credits.ledger.draw import next_expiry as _next_expiry
from credits.ledger.models import Hold, JournalTransaction, Lot, Posting, Wallet
from credits.ledger.service import (
    _check_key,
    _expire_wallet,
    _lock_hold,
    _lock_wallets,
    _new_tx,
    _open_lots,
    _post,
    _take_from_lots,
)

W: Table = Wallet.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
J: Table = JournalTransaction.__table__  # type: ignore[assignment]
P: Table = Posting.__table__  # type: ignore[assignment]
H: Table = Hold.__table__  # type: ignore[assignment]


def _replayed(session: Session, key: str, kind: str) -> int | None:
    """The id of the transaction already recorded under `key`; IdempotencyConflict if it is another kind."""
    row = session.execute(select(J.c.id, J.c.kind).where(J.c.idempotency_key == key)).first()
    if row is None:
        return None
    if row.kind != kind:
        raise IdempotencyConflict("this idempotency key was used for a different movement")
    return int(row.id)


def _restore_refund_debit(session: Session, debit_tx_id: int, now: datetime, *, key: str, memo: str = "",
                          actor: str | None = None) -> int:
    """Put the credit a refund debit took back into the lots it came from; return the restoring transaction.

    For a refund the gateway refused (or that never reached it): the customer keeps the credit. The lot keeps
    its expiry; credit restored to a lot that expired meanwhile is broken by the next expiry run. With the same
    `key` a replay returns the first transaction. Raises NotFound for a transaction that is not a refund debit.
    """
    _check_key(key)
    legs = session.execute(
        select(P.c.wallet_id, P.c.lot_id, P.c.amount).join(J, J.c.id == P.c.tx_id)
        .where(P.c.tx_id == debit_tx_id, J.c.kind == "refund_debit", P.c.lot_id.is_not(None))
    ).all()
    if not legs:
        raise NotFound("no such refund debit")
    wallet_ids = sorted({int(leg.wallet_id) for leg in legs})
    _lock_wallets(session, wallet_ids)
    replay = _replayed(session, key, "refund_restore")
    if replay is not None:
        return replay
    tx_id = _new_tx(session, "refund_restore", now, key=key, memo=memo or "refund failed: credit restored",
                    actor=actor)
    postings: list[dict[str, Any]] = []
    restored: dict[int, int] = {}
    for leg in legs:
        amount = -int(leg.amount)
        postings.append({"wallet_id": int(leg.wallet_id), "lot_id": int(leg.lot_id), "amount": amount})
        postings.append({"system_account": "refunds", "amount": -amount})
        restored[int(leg.wallet_id)] = restored.get(int(leg.wallet_id), 0) + amount
    _post(session, tx_id, postings)
    # Negative draws put the credit back (remaining <= granted still holds: it came out of these lots).
    _take_from_lots(session, [(int(leg.lot_id), int(leg.amount)) for leg in legs])
    for wallet_id, amount in restored.items():
        earliest = session.execute(
            select(func.min(L.c.expires_at)).where(L.c.wallet_id == wallet_id, L.c.remaining > 0)
        ).scalar()
        session.execute(update(W).where(W.c.id == wallet_id).values(balance=W.c.balance + amount,
                                                                    next_expiry_at=earliest))
    return tx_id


def _write_off_hold(session: Session, key: str, now: datetime, *, memo: str = "",
                    actor: str | None = None) -> int:
    """Settle the hold `key` to `chargeback_loss` (a lost dispute); return the amount written off.

    Like a call's settle, the credit comes from lots that had not expired when the hold was made, at most
    what the hold still protects plus what is available. A hold already written off returns its amount
    again (nothing moves); a released one raises Conflict; an unknown key NotFound. A hold the sweep expired
    is written off from available credit.
    """
    hold = _lock_hold(session, key)
    if hold.status == "settled" or hold.charged is not None:
        return int(hold.charged or 0)
    if hold.status == "released":
        raise Conflict("this hold was released")
    late = hold.status == "expired"
    reserved = 0 if late else int(hold.amount)
    balance = int(hold.w_balance)
    if hold.w_next_expiry_at is not None and hold.w_next_expiry_at <= now:
        balance -= _expire_wallet(session, int(hold.wallet_id), now)[1]
    lots = _open_lots(session, int(hold.wallet_id))
    since = now if late else hold.created_at
    eligible = [lot for lot in lots if lot.expires_at > since]
    amount = max(0, min(int(hold.amount), reserved + balance - int(hold.w_held),
                        sum(lot.remaining for lot in eligible)))
    taken = draw(eligible, amount)
    tx_id: int | None = None
    if amount:
        tx_id = _new_tx(session, "adjustment", now, key=f"{key}:write-off"[:200], memo=memo or "chargeback lost",
                        actor=actor)
        legs: list[dict[str, Any]] = [
            {"wallet_id": int(hold.wallet_id), "lot_id": lot_id, "amount": -part} for lot_id, part in taken
        ]
        legs.append({"system_account": "chargeback_loss", "amount": amount})
        _post(session, tx_id, legs)
        _take_from_lots(session, taken)
    session.execute(update(H).where(H.c.id == hold.id).values(
        status=hold.status if late else "settled", finished_at=hold.finished_at or now, charged=amount,
        shortfall=0, tx_id=tx_id))
    session.execute(update(W).where(W.c.id == hold.wallet_id).values(
        balance=W.c.balance - amount, held=W.c.held - reserved, next_expiry_at=_next_expiry(lots, taken)))
    return amount


def _write_off_lot(session: Session, lot_id: int, amount: int, now: datetime, *, key: str, memo: str = "",
                   actor: str | None = None) -> int:
    """Move up to `amount` of a lot's unused, unexpired and unheld credit to `chargeback_loss`; return how much.

    For a dispute lost before we saw it open (events out of order), when no hold exists to write off.
    With the same `key` a replay moves nothing and returns what the first call moved.
    """
    _check_key(key)
    wallet_id = session.execute(select(L.c.wallet_id).where(L.c.id == lot_id)).scalar()
    if wallet_id is None:
        raise NotFound("no such lot")
    wallet = _lock_wallets(session, [int(wallet_id)])[int(wallet_id)]
    replay = _replayed(session, key, "adjustment")
    if replay is not None:
        moved: int = session.execute(
            select(func.coalesce(func.sum(P.c.amount), 0)).where(P.c.tx_id == replay, P.c.lot_id == lot_id)
        ).scalar_one()
        return -int(moved)
    balance = int(wallet.balance)
    if wallet.next_expiry_at is not None and wallet.next_expiry_at <= now:
        balance -= _expire_wallet(session, int(wallet_id), now)[1]
    lot = session.execute(select(L).where(L.c.id == lot_id)).one()
    live = int(lot.remaining) if lot.expires_at > now else 0
    take = max(0, min(amount, live, balance - int(wallet.held)))
    if take == 0:
        return 0
    tx_id = _new_tx(session, "adjustment", now, key=key, memo=memo or "chargeback lost", actor=actor)
    _post(session, tx_id, [
        {"wallet_id": int(wallet_id), "lot_id": lot_id, "amount": -take},
        {"system_account": "chargeback_loss", "amount": take},
    ])
    _take_from_lots(session, [(lot_id, take)])
    session.execute(update(W).where(W.c.id == wallet_id).values(balance=W.c.balance - take))
    return take


def _hold_for_dispute(session: Session, lot_id: int, amount: int, now: datetime, *, key: str,
                      expires_at: datetime) -> int:
    """Hold up to `amount` of a disputed purchase's unused credit (its lot's live remaining, within available).

    Returns the amount held (0: nothing left to hold, and no hold is made). A replay with the same `key`
    returns the existing hold's amount. The hold is an ordinary ledger hold: released when the dispute is won,
    written off with `_write_off_hold` when it is lost, and expired by the sweep at `expires_at` at the latest.
    """
    from credits.ledger.service import _reserve

    _check_key(key)
    wallet_id = session.execute(select(L.c.wallet_id).where(L.c.id == lot_id)).scalar()
    if wallet_id is None:
        raise NotFound("no such lot")
    wallet = _lock_wallets(session, [int(wallet_id)])[int(wallet_id)]
    existing = session.execute(select(H.c.amount).where(H.c.key == key)).scalar()
    if existing is not None:
        return int(existing)
    balance = int(wallet.balance)
    if wallet.next_expiry_at is not None and wallet.next_expiry_at <= now:
        balance -= _expire_wallet(session, int(wallet_id), now)[1]
    lot = session.execute(select(L.c.remaining, L.c.expires_at).where(L.c.id == lot_id)).one()
    live = int(lot.remaining) if lot.expires_at > now else 0
    take = max(0, min(amount, live, balance - int(wallet.held)))
    if take == 0:
        return 0
    _reserve(session, int(wallet_id), key, take, now, expires_at)
    return take
