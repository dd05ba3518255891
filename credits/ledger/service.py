"""Ledger use cases: open wallets, grant, reserve/settle/release holds, expire lots, transfer, refund debits.

Every public function is one transaction (`unit_of_work`). The `_`-prefixed functions take a Session that the
caller already holds, so that another feature (call charging, payments) can fold a ledger step into its own
transaction. Every read-then-write of credit locks the wallet row(s) first, in id order.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, Table, and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from credits import clock, config, crypto, money
from credits.accounts.models import User
from credits.db import get as db_get
from credits.db import insert_for, unit_of_work
from credits.errors import (
    AccountNotActive,
    Conflict,
    IdempotencyConflict,
    InsufficientCredit,
    LimitExceeded,
    MoneyFrozen,
    NotFound,
    ValidationError,
)
from credits.ledger import fastpath
from credits.ledger.draw import HoldState, LotState, draw, protected_by_holds
from credits.ledger.draw import next_expiry as _next_expiry
from credits.ledger.models import (
    Hold,
    JournalTransaction,
    Lot,
    Posting,
    Transfer,
    Wallet,
)

W: Table = Wallet.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
J: Table = JournalTransaction.__table__  # type: ignore[assignment]
P: Table = Posting.__table__  # type: ignore[assignment]
H: Table = Hold.__table__  # type: ignore[assignment]
T: Table = Transfer.__table__  # type: ignore[assignment]

GRANT_COUNTER_ACCOUNT = {
    "purchase": "gateway_clearing",
    "auto_recharge": "gateway_clearing",
    "credit_note": "promotions",
    "promo": "promotions",
}
PAID_SOURCES = ("purchase", "auto_recharge")
KEY_MAX = 200


# ---------------------------------------------------------------- views


@dataclass(frozen=True)
class WalletView:
    id: int
    user_id: int
    account_number: str
    currency: str
    balance: int
    held: int
    next_expiry_at: datetime | None

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True)
class LotView:
    id: int
    wallet_id: int
    source: str
    granted: int
    remaining: int
    expires_at: datetime
    created_at: datetime
    reference: str | None
    grant_tx_id: int


@dataclass(frozen=True)
class HoldView:
    id: int
    wallet_id: int
    key: str
    amount: int
    status: str
    created_at: datetime
    expires_at: datetime
    charged: int | None
    shortfall: int
    #: False when this answer is the replay of an earlier call with the same key.
    created: bool = True


@dataclass(frozen=True)
class TransferView:
    id: int
    tx_id: int
    from_wallet_id: int
    to_wallet_id: int
    from_account: str
    to_account: str
    amount: int
    created_at: datetime
    created: bool = True


@dataclass(frozen=True)
class StatementLine:
    tx_id: int
    kind: str
    memo: str
    created_at: datetime
    amount: int
    balance_after: int


@dataclass(frozen=True)
class StatementPage:
    lines: list[StatementLine]
    next_cursor: str | None


@dataclass(frozen=True)
class ExpiryResult:
    wallets: int
    lots: int
    amount: int


@dataclass(frozen=True)
class GrantResult:
    lot: LotView
    created: bool


def _wallet_view(row: Any) -> WalletView:
    return WalletView(
        id=row.id,
        user_id=row.user_id,
        account_number=row.account_number,
        currency=row.currency,
        balance=row.balance,
        held=row.held,
        next_expiry_at=row.next_expiry_at,
    )


def _lot_view(row: Any) -> LotView:
    return LotView(
        id=row.id,
        wallet_id=row.wallet_id,
        source=row.source,
        granted=row.granted,
        remaining=row.remaining,
        expires_at=row.expires_at,
        created_at=row.created_at,
        reference=row.reference,
        grant_tx_id=row.grant_tx_id,
    )


def _hold_view(row: Any, created: bool = True) -> HoldView:
    return HoldView(
        id=row.id,
        wallet_id=row.wallet_id,
        key=row.key,
        amount=row.amount,
        status=row.status,
        created_at=row.created_at,
        expires_at=row.expires_at,
        charged=row.charged,
        shortfall=row.shortfall,
        created=created,
    )


# ---------------------------------------------------------------- helpers


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX):
        raise ValidationError(f"an idempotency key is 1-{KEY_MAX} characters", field="key")


def _lock_wallets(session: Session, wallet_ids: Sequence[int]) -> dict[int, Row[Any]]:
    """Lock the wallets in id order (deadlock-free) and return their current rows by id."""
    rows = session.execute(
        select(W).where(W.c.id.in_(sorted(set(wallet_ids)))).order_by(W.c.id).with_for_update()
    ).all()
    found = {row.id: row for row in rows}
    missing = set(wallet_ids) - set(found)
    if missing:
        raise NotFound("no such wallet")
    return found


def _lock_hold(session: Session, key: str) -> Row[Any]:
    """Lock the hold `key` and its wallet in one statement; raise NotFound for an unknown key.

    The row has the hold's columns plus its wallet's `w_balance`, `w_held` and `w_next_expiry_at`.
    (FOR UPDATE over the join locks both rows: one round trip fewer on the call-completion path.)
    """
    if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX:
        raise NotFound("no hold with that key")
    row = session.connection().execute(_LOCK_HOLD, {"lock_key": key}).first()
    if row is None:
        raise NotFound("no hold with that key")
    return row


# Hot-path statements built once (building and cache-keying a statement costs more CPU than running it).
_LOCK_HOLD = (
    select(H, W.c.balance.label("w_balance"), W.c.held.label("w_held"), W.c.next_expiry_at.label("w_next_expiry_at"))
    .select_from(W.join(H, H.c.wallet_id == W.c.id)).where(H.c.key == bindparam("lock_key")).with_for_update()
)
_OPEN_LOTS = (
    select(L.c.id, L.c.source, L.c.remaining, L.c.expires_at, L.c.created_at)
    .where(L.c.wallet_id == bindparam("lots_wallet"), L.c.remaining > 0)
)


def _new_tx(session: Session, kind: str, now: datetime, *, key: str | None = None, memo: str = "",
            actor: str | None = None) -> int:
    tx_id: int = session.execute(
        insert(J).values(kind=kind, created_at=now, idempotency_key=key, memo=memo[:200], actor=actor)
        .returning(J.c.id)
    ).scalar_one()
    return tx_id


def _post(session: Session, tx_id: int, legs: list[dict[str, Any]]) -> None:
    """Insert the postings of one transaction; they must sum to zero (checked here and by the database)."""
    if sum(leg["amount"] for leg in legs) != 0:
        raise AssertionError("postings of a transaction must sum to zero")
    rows = [
        {"tx_id": tx_id, "wallet_id": leg.get("wallet_id"), "lot_id": leg.get("lot_id"),
         "system_account": leg.get("system_account"), "amount": leg["amount"]}
        for leg in legs
        if leg["amount"] != 0
    ]
    if rows:
        session.execute(insert(P), rows)


def _take_from_lots(session: Session, taken: list[tuple[int, int]]) -> None:
    if taken:
        session.execute(
            update(L).where(L.c.id == bindparam("b_id")).values(remaining=L.c.remaining - bindparam("b_amount")),
            [{"b_id": lot_id, "b_amount": amount} for lot_id, amount in taken],
        )


def _lot_states(rows: Sequence[Any]) -> list[LotState]:
    return [LotState(r.id, r.source, r.remaining, r.expires_at, r.created_at) for r in rows]


def _open_lots(session: Session, wallet_id: int) -> list[LotState]:
    rows = session.connection().execute(_OPEN_LOTS, {"lots_wallet": wallet_id}).all()
    return _lot_states(rows)


def _resolve_wallet(session: Session, account: str | int) -> Row[Any]:
    """Find a wallet by id (int), account number or owner email; raise NotFound (ValidationError on a non-name)."""
    if isinstance(account, bool) or not isinstance(account, int | str):
        raise ValidationError("an account is named by its id, account number or email address", field="account")
    if isinstance(account, int):
        cond = W.c.id == account
    elif "@" in account:
        index = crypto.blind_index("email", account.strip().lower())
        cond = W.c.user_id == select(User.id).where(User.email_bidx == index).scalar_subquery()
    else:
        cond = W.c.account_number == account.strip()
    row = session.execute(select(W).where(cond)).first()
    if row is None:
        raise NotFound("no account with that email address or account number")
    return row


# ---------------------------------------------------------------- wallets


def _new_account_number() -> str:
    return str(secrets.randbelow(9 * 10**9) + 10**9)


def _open_wallet(session: Session, user_id: int, currency: str, now: datetime) -> WalletView:
    money.check_currency(currency)
    existing = session.execute(select(W).where(W.c.user_id == user_id)).first()
    if existing is not None:
        return _wallet_view(existing)
    for _ in range(20):
        number = _new_account_number()
        taken = session.execute(select(W.c.id).where(W.c.account_number == number)).first()
        if taken is None:
            break
    else:  # pragma: no cover - 9e9 numbers
        raise Conflict("could not allocate an account number")
    wallet_id: int = session.execute(
        insert(W).values(user_id=user_id, account_number=number, currency=currency, balance=0, held=0,
                         created_at=now).returning(W.c.id)
    ).scalar_one()
    return WalletView(wallet_id, user_id, number, currency, 0, 0, None)


def open_wallet(user_id: int, currency: str | None = None) -> WalletView:
    """Open the wallet of a user (idempotent: an existing wallet is returned). Raises ValidationError on currency."""
    with unit_of_work() as uow:
        view = _open_wallet(uow.session, user_id, currency or config.current().default_currency, clock.now())
        uow.commit()
        return view


def get_wallet(account: str | int) -> WalletView:
    """The wallet named by id, account number or owner email. Raises NotFound."""
    with unit_of_work() as uow:
        return _wallet_view(_resolve_wallet(uow.session, account))


def wallet_of_user(user_id: int) -> WalletView:
    with unit_of_work() as uow:
        row = uow.session.execute(select(W).where(W.c.user_id == user_id)).first()
        if row is None:
            raise NotFound("no wallet")
        return _wallet_view(row)


# ---------------------------------------------------------------- grant


def _grant(
    session: Session,
    wallet_id: int,
    amount: int,
    source: str,
    now: datetime,
    *,
    expires_at: datetime | None = None,
    key: str | None = None,
    reference: str | None = None,
    memo: str = "",
    actor: str | None = None,
    currency: str | None = None,
) -> GrantResult:
    money.check_amount(amount)
    _check_key(key)
    if source not in GRANT_COUNTER_ACCOUNT:
        raise ValidationError(f"a grant's source is one of {', '.join(GRANT_COUNTER_ACCOUNT)}", field="source")
    if currency is not None:
        money.check_currency(currency)
    cfg = config.current()
    if expires_at is None:
        expires_at = now + timedelta(days=cfg.credit_validity_days)
    if not isinstance(expires_at, datetime):
        raise ValidationError("expires_at must be a datetime", field="expires_at")
    if expires_at.tzinfo is None:
        raise ValidationError("expires_at must carry a timezone", field="expires_at")
    if expires_at <= now:
        raise ValidationError("the credit would already be expired", field="expires_at")
    wallet = _lock_wallets(session, [wallet_id])[wallet_id]
    if currency is not None and currency != wallet.currency:
        raise ValidationError(f"this wallet holds {wallet.currency}, not {currency}", field="currency")
    if key is not None:
        # Outer join: a key already used by another kind of movement (a transfer, a refund debit) is a
        # conflict, not a unique-constraint crash at the INSERT below.
        replay = session.execute(
            select(J.c.kind, L).select_from(J.outerjoin(L, L.c.grant_tx_id == J.c.id))
            .where(J.c.idempotency_key == key)
        ).first()
        if replay is not None:
            if (replay.kind != "grant" or replay.wallet_id != wallet_id or replay.granted != amount
                    or replay.source != source):
                raise IdempotencyConflict("this idempotency key was used for a different grant")
            return GrantResult(_lot_view(replay), created=False)
    if wallet.balance + amount > money.MAX_AMOUNT * 10:
        raise LimitExceeded("the wallet would hold more than the maximum balance")
    tx_id = _new_tx(session, "grant", now, key=key, memo=memo or f"{source} credit", actor=actor)
    lot_id: int = session.execute(
        insert(L).values(wallet_id=wallet_id, source=source, granted=amount, remaining=amount,
                         expires_at=expires_at, created_at=now, grant_tx_id=tx_id, reference=reference)
        .returning(L.c.id)
    ).scalar_one()
    _post(session, tx_id, [
        {"wallet_id": wallet_id, "lot_id": lot_id, "amount": amount},
        {"system_account": GRANT_COUNTER_ACCOUNT[source], "amount": -amount},
    ])
    next_expiry = expires_at if wallet.next_expiry_at is None else min(wallet.next_expiry_at, expires_at)
    if cfg.expiry_policy == "rolling" and source in PAID_SOURCES:
        # A purchase extends every live lot to its own expiry; expired lots are not revived.
        session.execute(
            update(L).where(L.c.wallet_id == wallet_id, L.c.remaining > 0, L.c.expires_at > now,
                            L.c.expires_at < expires_at).values(expires_at=expires_at)
        )
        if wallet.next_expiry_at is None or wallet.next_expiry_at > now:
            next_expiry = expires_at
    session.execute(
        update(W).where(W.c.id == wallet_id).values(balance=W.c.balance + amount, next_expiry_at=next_expiry)
    )
    lot = LotView(lot_id, wallet_id, source, amount, amount, expires_at, now, reference, tx_id)
    return GrantResult(lot, created=True)


def grant(
    account: str | int,
    amount: int,
    source: str,
    *,
    expires_at: datetime | None = None,
    key: str | None = None,
    reference: str | None = None,
    memo: str = "",
    actor: str | None = None,
    currency: str | None = None,
) -> GrantResult:
    """Grant a lot of `amount` micro-units to a wallet (by id, account number or email).

    `source` is purchase, auto_recharge, credit_note or promo; the counter-posting goes to gateway_clearing
    (paid) or promotions (goodwill). Expiry defaults to now + CREDITS_CREDIT_VALIDITY_DAYS; under the
    `rolling` policy a paid grant extends the wallet's live lots to its expiry. With `key`, a replay returns
    the first lot (`created` False) and moves nothing; a replay with other parameters raises
    IdempotencyConflict. Raises ValidationError (amount, source, currency, expiry already past) and NotFound.
    """
    with unit_of_work() as uow:
        wallet = _resolve_wallet(uow.session, account)
        result = _grant(uow.session, wallet.id, amount, source, clock.now(), expires_at=expires_at, key=key,
                        reference=reference, memo=memo, actor=actor, currency=currency)
        uow.commit()
        return result


# ---------------------------------------------------------------- holds


#: Reserve's fast path: lock the wallet and take the credit in one conditional UPDATE (re-checked on the row's
#: latest version once locked). Wallets with credit due to expire, or short of credit, take the long way.
_TAKE_HELD = (
    update(W)
    .where(W.c.id == bindparam("t_wallet"), W.c.balance - W.c.held >= bindparam("t_amount"),
           or_(W.c.next_expiry_at.is_(None), W.c.next_expiry_at > bindparam("t_now")))
    .values(held=W.c.held + bindparam("t_amount"))
    .returning(W.c.id)
)
#: PostgreSQL: the fast path in one statement (took: whether the credit was taken; hold_id: None on a replay).
_RESERVE_PG = text(
    "WITH took AS (UPDATE wallets SET held = held + CAST(:t_amount AS bigint) WHERE id = :t_wallet "
    "AND balance - held >= CAST(:t_amount AS bigint) AND (next_expiry_at IS NULL OR next_expiry_at > :t_now) "
    "RETURNING id), "
    "hold AS (INSERT INTO holds (wallet_id, key, amount, status, created_at, expires_at, shortfall) "
    "SELECT id, :h_key, CAST(:t_amount AS bigint), 'active', :t_now, :h_expires, 0 FROM took "
    "ON CONFLICT (key) DO NOTHING RETURNING id) "
    "SELECT (SELECT count(*) FROM took) AS took, (SELECT id FROM hold) AS hold_id"
)
_GIVE_BACK_HELD = update(W).where(W.c.id == bindparam("t_wallet")).values(held=W.c.held - bindparam("t_amount"))
_HOLD_INSERT: dict[str, Any] = {}


def _hold_insert(dialect: str) -> Any:
    """INSERT a hold unless its key exists, RETURNING its id (built once per dialect)."""
    stmt = _HOLD_INSERT.get(dialect)
    if stmt is None:
        stmt = _HOLD_INSERT[dialect] = (
            insert_for(dialect)(H)
            .values(wallet_id=bindparam("h_wallet"), key=bindparam("h_key"), amount=bindparam("h_amount"),
                    status="active", created_at=bindparam("h_now"), expires_at=bindparam("h_expires"),
                    shortfall=0)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(H.c.id)
        )
    return stmt


def _hold_replay(session: Session, key: str, wallet_id: int, amount: int) -> HoldView | None:
    """The first answer for a hold key already used (IdempotencyConflict if for another reservation)."""
    existing = session.execute(select(H).where(H.c.key == key)).first()
    if existing is None:
        return None
    if existing.wallet_id != wallet_id or existing.amount != amount:
        raise IdempotencyConflict("this hold key was used for a different reservation")
    return _hold_view(existing, created=False)


def _reserve(session: Session, wallet_id: int, key: str, amount: int, now: datetime,
             expires_at: datetime) -> HoldView:
    money.check_amount(amount)
    _check_key(key)
    if key is None:
        raise ValidationError("a hold needs a key", field="key")
    hold_params = {"h_wallet": wallet_id, "h_key": key, "h_amount": amount, "h_now": now, "h_expires": expires_at}
    take = {"t_wallet": wallet_id, "t_amount": amount, "t_now": now}
    conn = session.connection()  # Core statements: skip the ORM execution layers on the hot path
    dialect = conn.dialect.name
    hold_id: int | None = None
    if dialect == "postgresql":
        row = conn.execute(_RESERVE_PG, {**take, "h_key": key, "h_expires": expires_at}).one()
        took, hold_id = bool(row.took), row.hold_id
    else:
        took = conn.execute(_TAKE_HELD, take).first() is not None
        if took:
            hold_id = conn.execute(_hold_insert(dialect), hold_params).scalar()
    if took:
        if hold_id is not None:
            return HoldView(hold_id, wallet_id, key, amount, "active", now, expires_at, None, 0)
        # The key exists: a replay. Give the credit back and answer as the first time.
        conn.execute(_GIVE_BACK_HELD, take)
        replay = _hold_replay(session, key, wallet_id, amount)
        assert replay is not None
        return replay
    wallet = _lock_wallets(session, [wallet_id])[wallet_id]
    if wallet.next_expiry_at is not None and wallet.next_expiry_at <= now:
        _expire_wallet(session, wallet_id, now)
        wallet = _lock_wallets(session, [wallet_id])[wallet_id]
    if wallet.balance - wallet.held >= amount:
        hold_id = conn.execute(_hold_insert(dialect), hold_params).scalar()
    if hold_id is None:
        replay = _hold_replay(session, key, wallet_id, amount)
        if replay is not None:
            return replay
        raise InsufficientCredit("the available credit does not cover this amount",
                                 available=wallet.balance - wallet.held)
    session.execute(update(W).where(W.c.id == wallet_id).values(held=W.c.held + amount))
    return HoldView(hold_id, wallet_id, key, amount, "active", now, expires_at, None, 0)


def reserve(account: str | int, key: str, amount: int, *, ttl_s: int = 7200) -> HoldView:
    """Hold `amount` of a wallet's available credit under `key` until settled, released or `ttl_s` passes.

    A replay with the same key returns the first hold (`created` False); with another amount or wallet it
    raises IdempotencyConflict. Raises InsufficientCredit when available < amount, ValidationError, NotFound.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
        raise ValidationError("a hold's lifetime is a positive number of seconds", field="ttl_s")
    now = clock.now()
    expires_at = now + timedelta(seconds=ttl_s)
    by_id_or_number = (isinstance(account, int) and not isinstance(account, bool)) or (
        isinstance(account, str) and "@" not in account)
    if fastpath.active() and isinstance(key, str) and by_id_or_number:
        money.check_amount(amount)
        _check_key(key)
        fast = fastpath.reserve(account.strip() if isinstance(account, str) else account, key, amount, now,
                                expires_at)
        if fast is not None:
            return HoldView(fast[0], fast[1], key, amount, "active", now, expires_at, None, 0)
    with unit_of_work() as uow:
        wallet_id = account if isinstance(account, int) else _resolve_wallet(uow.session, account).id
        view = _reserve(uow.session, wallet_id, key, amount, now, now + timedelta(seconds=ttl_s))
        uow.commit()
        return view


def _settle(session: Session, key: str, amount: int, now: datetime, *, memo: str = "") -> HoldView:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValidationError("a charge is a non-negative integer of micro-units", field="amount")
    if amount > money.MAX_AMOUNT:
        raise ValidationError("the charge is larger than the maximum", field="amount")
    hold = _lock_hold(session, key)
    wallet_id = hold.wallet_id
    if hold.charged is not None:
        if hold.charged + hold.shortfall != amount:
            raise IdempotencyConflict("this hold was already settled for a different amount")
        return _hold_view(hold, created=False)
    if hold.status == "released":
        raise Conflict("this hold was released")
    late = hold.status == "expired"
    reserved = 0 if late else hold.amount
    balance = hold.w_balance
    if hold.w_next_expiry_at is not None and hold.w_next_expiry_at <= now:
        # Expired credit is not available credit: break it before charging (an active hold keeps
        # what it needs of lots that expired after it was made), so that a charge above the hold cannot
        # spend credit that the expiry job would have taken, whether or not the job ran first.
        balance -= _expire_wallet(session, wallet_id, now)[1]
    lots = _open_lots(session, wallet_id)
    since = now if late else hold.created_at
    eligible = [lot for lot in lots if lot.expires_at > since]
    coverable = min(amount, reserved + balance - hold.w_held, sum(lot.remaining for lot in eligible))
    shortfall = amount - coverable
    taken = draw(eligible, coverable)
    if session.get_bind().dialect.name == "postgresql":
        _settle_writes_pg(
            session, wallet_id=wallet_id, hold_id=hold.id, now=now, memo=memo or f"charge {key}"[:200],
            amount=amount, taken=taken, coverable=coverable, shortfall=shortfall, reserved=reserved,
            status=hold.status if late else "settled", finished_at=hold.finished_at or now,
            next_expiry=_next_expiry(lots, taken))
        return HoldView(hold.id, wallet_id, key, hold.amount, hold.status if late else "settled",
                        hold.created_at, hold.expires_at, coverable, shortfall)
    if amount > 0:
        tx_id: int | None = _new_tx(session, "settle", now, memo=memo or f"charge {key}"[:200])
        assert tx_id is not None
        legs: list[dict[str, Any]] = [
            {"wallet_id": wallet_id, "lot_id": lot_id, "amount": -part} for lot_id, part in taken
        ]
        legs.append({"system_account": "usage_revenue", "amount": amount})
        legs.append({"system_account": "credit_loss", "amount": -shortfall})
        _post(session, tx_id, legs)
        _take_from_lots(session, taken)
    else:
        tx_id = None
    session.execute(
        update(H).where(H.c.id == hold.id).values(
            status=hold.status if late else "settled", finished_at=hold.finished_at or now,
            charged=coverable, shortfall=shortfall, tx_id=tx_id)
    )
    session.execute(
        update(W).where(W.c.id == wallet_id).values(
            balance=W.c.balance - coverable, held=W.c.held - reserved, next_expiry_at=_next_expiry(lots, taken))
    )
    return HoldView(hold.id, wallet_id, key, hold.amount, hold.status if late else "settled", hold.created_at,
                    hold.expires_at, coverable, shortfall)


_LEG_LOT = "(CAST(:wallet AS bigint), CAST(:lot{i} AS bigint), CAST(NULL AS varchar), -CAST(:part{i} AS bigint))"
_LEG_SYSTEM = "(CAST(NULL AS bigint), CAST(NULL AS bigint), CAST('{account}' AS varchar), CAST(:{param} AS bigint))"


def _settle_writes_pg(session: Session, *, wallet_id: int, hold_id: int, now: datetime, memo: str, amount: int,
                      taken: list[tuple[int, int]], coverable: int, shortfall: int, reserved: int, status: str,
                      finished_at: datetime, next_expiry: datetime | None) -> int | None:
    """PostgreSQL: the writes of a settle (journal transaction, postings, lots, hold, wallet) as ONE statement of
    data-modifying CTEs instead of five round trips; the same rows as the portable path. Returns the tx id."""
    if -sum(part for _, part in taken) + amount - shortfall != 0 or coverable != sum(part for _, part in taken):
        raise AssertionError("postings of a transaction must sum to zero")
    params: dict[str, Any] = {
        "wallet": wallet_id, "hold": hold_id, "now": now, "memo": memo, "status": status, "finished": finished_at,
        "charged": coverable, "shortfall": shortfall, "reserved": reserved, "next": next_expiry,
    }
    if amount > 0:
        for i, (lot_id, part) in enumerate(taken):
            params[f"lot{i}"], params[f"part{i}"] = lot_id, part
        params["revenue"], params["loss"] = amount, -shortfall
    shape = (len(taken), amount > 0, shortfall > 0)
    stmt = _SETTLE_PG.get(shape)
    if stmt is None:
        stmt = _SETTLE_PG[shape] = _settle_statement_pg(*shape)
    tx_id: int | None = session.connection().execute(stmt, params).scalar_one()
    return tx_id


_SETTLE_PG: dict[tuple[int, bool, bool], Any] = {}


def _settle_statement_pg(lots_drawn: int, charged: bool, shortfall: bool) -> Any:
    """The statement of `_settle_writes_pg` for one shape (lots drawn, anything charged, any shortfall)."""
    # Only fixed fragments and numbered placeholders go into the text (hence the noqa): values are all bound.
    ctes: list[str] = []
    tx_ref = "CAST(NULL AS bigint)"
    if charged:
        legs = [_LEG_LOT.format(i=i) for i in range(lots_drawn)]
        drawn = [f"(CAST(:lot{i} AS bigint), CAST(:part{i} AS bigint))" for i in range(lots_drawn)]
        legs.append(_LEG_SYSTEM.format(account="usage_revenue", param="revenue"))
        if shortfall:
            legs.append(_LEG_SYSTEM.format(account="credit_loss", param="loss"))
        ctes.append("tx AS (INSERT INTO journal_transactions (kind, created_at, memo) "
                    "VALUES ('settle', :now, :memo) RETURNING id)")
        ctes.append(
            "legs AS (INSERT INTO postings (tx_id, wallet_id, lot_id, system_account, amount) "  # noqa: S608
            "SELECT tx.id, v.wallet_id, v.lot_id, v.system_account, v.amount FROM tx, "
            "(VALUES " + ", ".join(legs) + ") AS v(wallet_id, lot_id, system_account, amount))")
        if drawn:
            ctes.append(
                "drawn AS (UPDATE lots SET remaining = lots.remaining - d.part "  # noqa: S608
                "FROM (VALUES " + ", ".join(drawn) + ") AS d(id, part) WHERE lots.id = d.id)")
        tx_ref = "(SELECT id FROM tx)"
    ctes.append(
        "hold AS (UPDATE holds SET status = :status, finished_at = :finished, charged = :charged, "  # noqa: S608
        "shortfall = :shortfall, tx_id = " + tx_ref + " WHERE id = :hold)")
    return text(
        "WITH " + ", ".join(ctes) + " UPDATE wallets SET balance = balance - :charged, "  # noqa: S608
        "held = held - :reserved, next_expiry_at = :next WHERE id = :wallet RETURNING " + tx_ref)


def settle(key: str, amount: int, *, memo: str = "") -> HoldView:
    """Charge `amount` against the hold `key` and release the rest of it.

    Credit is drawn from lots that had not expired when the hold was made, in draw order. A charge above the
    hold is taken from available credit; what even that cannot cover is booked to `credit_loss` and shows as
    `shortfall`. A hold the sweep already expired is still charged (from available credit, same rule).
    A replay with the same amount returns the first result (`created` False); a different amount raises
    IdempotencyConflict; a released hold raises Conflict; an unknown key NotFound.
    """
    now = clock.now()
    if (fastpath.active() and isinstance(key, str) and 1 <= len(key) <= KEY_MAX and not isinstance(amount, bool)
            and isinstance(amount, int) and 0 <= amount <= money.MAX_AMOUNT):
        fast = fastpath.settle(key, amount, now, memo or f"charge {key}")
        if fast is not None:
            hold_id, wallet_id, hold_amount, created_at, expires_at, charged, shortfall = fast
            return HoldView(hold_id, wallet_id, key, hold_amount, "settled", created_at, expires_at, charged, shortfall)
    with unit_of_work() as uow:
        view = _settle(uow.session, key, amount, now, memo=memo)
        uow.commit()
        return view


def _release(session: Session, key: str, now: datetime, *, status: str = "released") -> HoldView:
    hold = _lock_hold(session, key)
    wallet_id = hold.wallet_id
    if hold.status != "active":
        if hold.status in ("released", "expired") and hold.charged is None:
            return _hold_view(hold, created=False)
        raise Conflict(f"this hold is already {hold.status}")
    session.execute(update(H).where(H.c.id == hold.id).values(status=status, finished_at=now))
    session.execute(update(W).where(W.c.id == wallet_id).values(held=W.c.held - hold.amount))
    return HoldView(hold.id, wallet_id, key, hold.amount, status, hold.created_at, hold.expires_at, None, 0)


def release(key: str) -> HoldView:
    """Release the hold `key` without charging. Releasing twice returns the first result; a settled hold is
    a Conflict; an unknown key NotFound."""
    with unit_of_work() as uow:
        view = _release(uow.session, key, clock.now())
        uow.commit()
        return view


def sweep_holds(now: datetime | None = None, batch: int = 500) -> int:
    """Expire active holds whose deadline passed, returning their credit to available; return how many."""
    now = now or clock.now()
    total = 0
    while True:
        with unit_of_work() as uow:
            keys: Sequence[str] = uow.session.execute(
                # Wallet order, like every other multi-wallet lock, so a sweep cannot deadlock with a transfer.
                select(H.c.key).where(H.c.status == "active", H.c.expires_at <= now)
                .order_by(H.c.wallet_id, H.c.id).limit(batch)
            ).scalars().all()
            if not keys:
                return total
            for key in keys:
                if _release(uow.session, key, now, status="expired").created:
                    total += 1
            uow.commit()


# ---------------------------------------------------------------- expiry


def _expire_wallet(session: Session, wallet_id: int, now: datetime) -> tuple[int, int]:
    """Break the expired credit of one locked wallet, keeping what active holds made before expiry need.

    Returns (lots touched, amount broken).
    """
    lots = _open_lots(session, wallet_id)
    expired = [lot for lot in lots if lot.expires_at <= now]
    if not expired:
        session.execute(update(W).where(W.c.id == wallet_id).values(next_expiry_at=_next_expiry(lots, [])))
        return 0, 0
    hold_rows = session.execute(
        select(H.c.id, H.c.amount, H.c.created_at).where(H.c.wallet_id == wallet_id, H.c.status == "active")
    ).all()
    protected = protected_by_holds(lots, [HoldState(h.id, h.amount, h.created_at) for h in hold_rows])
    broken = [(lot.id, lot.remaining - protected[lot.id]) for lot in expired if lot.remaining > protected[lot.id]]
    total = sum(part for _, part in broken)
    if total:
        tx_id = _new_tx(session, "expiry", now, memo="credit expired")
        legs: list[dict[str, Any]] = [{"wallet_id": wallet_id, "lot_id": i, "amount": -p} for i, p in broken]
        legs.append({"system_account": "breakage", "amount": total})
        _post(session, tx_id, legs)
        _take_from_lots(session, broken)
    session.execute(
        update(W).where(W.c.id == wallet_id).values(balance=W.c.balance - total,
                                                   next_expiry_at=_next_expiry(lots, broken))
    )
    return len(broken), total


def expire_lots(now: datetime | None = None, *, batch: int = 2000, workers: int | None = None) -> ExpiryResult:
    """Move the remaining credit of expired lots to `breakage`, in batches of wallets (set-based).

    Wallets without active holds are handled by a few set-based statements per batch; wallets with active
    holds one by one, keeping what holds authorised before the expiry still need. Idempotent: a second run
    finds nothing. Returns counts of wallets, lots and the amount broken.

    On PostgreSQL the due wallets are split into `workers` (default 2) contiguous id ranges expired side by
    side, each batch its own transaction locking its wallets in id order (ranges are disjoint, so workers
    never wait for each other). SQLite serialises writers anyway: one worker there.
    """
    now = now or clock.now()
    if workers is None:
        workers = 2 if db_get().dialect == "postgresql" else 1
    if workers > 1:
        with unit_of_work() as uow:
            due: list[int] = list(uow.session.execute(
                select(W.c.id).where(W.c.next_expiry_at <= now).order_by(W.c.id)
            ).scalars().all())
        cuts = sorted({due[len(due) * k // workers - 1] for k in range(1, workers)}) if len(due) >= 2 * batch else []
        if cuts:
            ranges = list(zip([0, *cuts], [*cuts, None], strict=True))
            with ThreadPoolExecutor(len(ranges), thread_name_prefix="expire-lots") as pool:
                parts = list(pool.map(lambda r: _expire_range(now, batch, *r), ranges))
            return ExpiryResult(sum(p.wallets for p in parts), sum(p.lots for p in parts),
                                sum(p.amount for p in parts))
    return _expire_range(now, batch, 0, None)


def _expire_range(now: datetime, batch: int, after_id: int, upto_id: int | None) -> ExpiryResult:
    """Expire the due wallets with after_id < id <= upto_id (no upper bound for None), batch by batch."""
    wallets = lots = amount = 0
    last_id = after_id
    while True:
        with unit_of_work() as uow:
            s = uow.session
            query = select(W.c.id).where(W.c.next_expiry_at <= now, W.c.id > last_id)
            if upto_id is not None:
                query = query.where(W.c.id <= upto_id)
            ids: list[int] = list(s.execute(query.order_by(W.c.id).limit(batch).with_for_update()).scalars().all())
            if not ids:
                return ExpiryResult(wallets, lots, amount)
            last_id = ids[-1]
            with_holds: set[int] = set(s.execute(
                select(H.c.wallet_id).where(H.c.wallet_id.in_(ids), H.c.status == "active").distinct()
            ).scalars().all())
            plain = [i for i in ids if i not in with_holds]
            if plain:
                n, total = _expire_set(s, plain, now)
                lots += n
                amount += total
            for wallet_id in sorted(with_holds):
                n, total = _expire_wallet(s, wallet_id, now)
                lots += n
                amount += total
            wallets += len(ids)
            uow.commit()


#: PostgreSQL: expire the due lots of a batch of locked, hold-free wallets in ONE statement. The journal
#: transaction exists only if some lot is due; each due lot is zeroed and gets its posting, breakage gets the
#: total, and each wallet is written once (balance and next expiry: lots with credit not due at `now`).
_EXPIRE_SET_PG = text(
    "WITH due AS (SELECT id, wallet_id, remaining FROM lots WHERE wallet_id = ANY(CAST(:ids AS bigint[])) "
    "AND expires_at <= :now AND remaining > 0), "
    "tx AS (INSERT INTO journal_transactions (kind, created_at, memo) "
    "SELECT 'expiry', :now, 'credit expired' WHERE EXISTS (SELECT 1 FROM due) RETURNING id), "
    "zeroed AS (UPDATE lots SET remaining = 0 WHERE wallet_id = ANY(CAST(:ids AS bigint[])) "
    "AND expires_at <= :now AND remaining > 0), "
    "legs AS (INSERT INTO postings (tx_id, wallet_id, lot_id, amount) "
    "SELECT tx.id, due.wallet_id, due.id, -due.remaining FROM tx, due ORDER BY due.id), "
    "breakage AS (INSERT INTO postings (tx_id, system_account, amount) "
    "SELECT tx.id, 'breakage', sum(due.remaining) FROM tx, due GROUP BY tx.id), "
    "per_wallet AS (SELECT wallet_id, sum(remaining) AS total, count(*) AS n FROM due GROUP BY wallet_id), "
    "wallets_done AS (UPDATE wallets SET balance = wallets.balance - coalesce(per_wallet.total, 0), "
    "next_expiry_at = (SELECT min(l.expires_at) FROM lots l WHERE l.wallet_id = wallets.id AND l.remaining > 0 "
    "AND l.expires_at > :now) "
    "FROM unnest(CAST(:ids AS bigint[])) AS batch(id) LEFT JOIN per_wallet ON per_wallet.wallet_id = batch.id "
    "WHERE wallets.id = batch.id) "
    "SELECT coalesce(sum(n), 0) AS lots, coalesce(sum(total), 0) AS amount FROM per_wallet"
)


def _expire_set(session: Session, wallet_ids: list[int], now: datetime) -> tuple[int, int]:
    """Expire every due lot of these locked, hold-free wallets with set-based statements."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        row = conn.execute(_EXPIRE_SET_PG, {"ids": wallet_ids, "now": now}).one()
        return int(row.lots), int(row.amount)
    due = and_(L.c.wallet_id.in_(wallet_ids), L.c.expires_at <= now, L.c.remaining > 0)
    found = session.execute(select(func.count(), func.coalesce(func.sum(L.c.remaining), 0)).where(due)).one()
    count, total = int(found[0]), int(found[1])
    if count:
        tx_id = _new_tx(session, "expiry", now, memo="credit expired")
        session.execute(
            insert(P).from_select(
                ["tx_id", "wallet_id", "lot_id", "amount"],
                select(bindparam("tx", tx_id), L.c.wallet_id, L.c.id, -L.c.remaining).where(due),
            )
        )
        session.execute(insert(P).values(tx_id=tx_id, system_account="breakage", amount=total))
        broken = (
            select(func.coalesce(func.sum(L.c.remaining), 0))
            .where(L.c.wallet_id == W.c.id, L.c.expires_at <= now, L.c.remaining > 0)
            .scalar_subquery()
        )
        session.execute(update(W).where(W.c.id.in_(wallet_ids)).values(balance=W.c.balance - broken))
        session.execute(update(L).where(due).values(remaining=0))
    upcoming = (
        select(func.min(L.c.expires_at)).where(L.c.wallet_id == W.c.id, L.c.remaining > 0).scalar_subquery()
    )
    session.execute(update(W).where(W.c.id.in_(wallet_ids)).values(next_expiry_at=upcoming))
    return count, total


# ---------------------------------------------------------------- transfers


def _transfer_limits() -> tuple[int, int, int]:
    cfg = config.current()
    return (money.parse(cfg.transfer_min), money.parse(cfg.transfer_max), money.parse(cfg.transfer_daily_limit))


def _check_transfer_parties(session: Session, sender_id: int, recipient_id: int) -> None:
    """Raise AccountNotActive unless both accounts are active, MoneyFrozen when the sender's money is frozen."""
    users = {row.id: row for row in session.execute(
        select(User.id, User.status, User.money_frozen_at).where(User.id.in_([sender_id, recipient_id]))
    ).all()}
    sender, recipient = users.get(sender_id), users.get(recipient_id)
    if sender is None or sender.status != "active":
        raise AccountNotActive("your account may not transfer credit right now")
    if sender.money_frozen_at is not None:
        raise MoneyFrozen("money movement on your account is frozen after a security report; contact support")
    if recipient is None or recipient.status != "active":
        raise AccountNotActive("the recipient's account cannot receive credit")


def _transfer(session: Session, from_wallet_id: int, to: str | int, amount: int, now: datetime, *,
              key: str | None = None, actor: str | None = None) -> TransferView:
    money.check_amount(amount)
    _check_key(key)
    recipient = _resolve_wallet(session, to)
    if recipient.id == from_wallet_id:
        raise ValidationError("you cannot transfer credit to yourself", field="to")
    wallets = _lock_wallets(session, [from_wallet_id, recipient.id])
    if key is not None:
        replay = session.execute(
            select(J.c.kind, T).select_from(J.outerjoin(T, T.c.tx_id == J.c.id)).where(J.c.idempotency_key == key)
        ).first()
        if replay is not None:
            if (replay.id is None or replay.from_wallet_id != from_wallet_id or replay.to_wallet_id != recipient.id
                    or replay.amount != amount):
                raise IdempotencyConflict("this idempotency key was used for a different transfer")
            return _transfer_view(session, replay, created=False)
    minimum, maximum, daily = _transfer_limits()
    if amount < minimum:
        raise LimitExceeded(f"the smallest transfer is {money.format_micro(minimum)}")
    if amount > maximum:
        raise LimitExceeded(f"the largest transfer is {money.format_micro(maximum)}")
    source, target = wallets[from_wallet_id], wallets[recipient.id]
    _check_transfer_parties(session, source.user_id, target.user_id)
    if source.currency != target.currency:
        raise ValidationError("the recipient's wallet holds another currency", field="to")
    sent_today: int = session.execute(
        select(func.coalesce(func.sum(T.c.amount), 0))
        .where(T.c.from_wallet_id == from_wallet_id, T.c.created_at > now - timedelta(days=1))
    ).scalar_one()
    if sent_today + amount > daily:
        raise LimitExceeded(f"transfers are limited to {money.format_micro(daily)} in 24 hours")
    if source.next_expiry_at is not None and source.next_expiry_at <= now:
        _expire_wallet(session, from_wallet_id, now)
        source = _lock_wallets(session, [from_wallet_id])[from_wallet_id]
    if source.balance - source.held < amount:
        raise InsufficientCredit("your available credit does not cover this transfer")
    lots = _open_lots(session, from_wallet_id)
    live = [lot for lot in lots if lot.expires_at > now]
    taken = draw(live, amount)
    by_id = {lot.id: lot for lot in lots}
    tx_id = _new_tx(session, "transfer", now, key=key,
                    memo=f"transfer {source.account_number} -> {target.account_number}", actor=actor)
    legs: list[dict[str, Any]] = []
    for lot_id, part in taken:
        new_lot: int = session.execute(
            insert(L).values(wallet_id=target.id, source="transfer_in", granted=part, remaining=part,
                             expires_at=by_id[lot_id].expires_at, created_at=now, grant_tx_id=tx_id,
                             origin_lot_id=lot_id).returning(L.c.id)
        ).scalar_one()
        legs.append({"wallet_id": from_wallet_id, "lot_id": lot_id, "amount": -part})
        legs.append({"wallet_id": target.id, "lot_id": new_lot, "amount": part})
    _post(session, tx_id, legs)
    _take_from_lots(session, taken)
    earliest = min(by_id[lot_id].expires_at for lot_id, _ in taken)
    session.execute(update(W).where(W.c.id == from_wallet_id).values(
        balance=W.c.balance - amount, next_expiry_at=_next_expiry(lots, taken)))
    target_next = earliest if target.next_expiry_at is None else min(target.next_expiry_at, earliest)
    session.execute(update(W).where(W.c.id == target.id).values(
        balance=W.c.balance + amount, next_expiry_at=target_next))
    transfer_id: int = session.execute(
        insert(T).values(tx_id=tx_id, from_wallet_id=from_wallet_id, to_wallet_id=target.id, amount=amount,
                         created_at=now, idempotency_key=key).returning(T.c.id)
    ).scalar_one()
    return TransferView(transfer_id, tx_id, from_wallet_id, target.id, source.account_number,
                        target.account_number, amount, now)


def _transfer_view(session: Session, row: Any, created: bool) -> TransferView:
    numbers: dict[int, str] = dict(session.execute(
        select(W.c.id, W.c.account_number).where(W.c.id.in_([row.from_wallet_id, row.to_wallet_id]))
    ).all())
    return TransferView(row.id, row.tx_id, row.from_wallet_id, row.to_wallet_id, numbers[row.from_wallet_id],
                        numbers[row.to_wallet_id], row.amount, row.created_at, created)


def transfer(from_account: str | int, to: str | int, amount: int, *, key: str | None = None,
             actor: str | None = None) -> TransferView:
    """Move `amount` of available credit to another wallet, named by email or account number.

    The recipient gets new transfer_in lots with the expiry of the lots drawn from. Refused with
    LimitExceeded below the minimum, above the maximum or past the 24-hour limit (settings
    CREDITS_TRANSFER_MIN/_MAX/_DAILY_LIMIT), AccountNotActive when either account is frozen, restricted or
    closed, MoneyFrozen when the sender's money movement is frozen (security report), ValidationError to
    yourself or across currencies, InsufficientCredit, NotFound. With `key`, a replay returns the first
    transfer and moves nothing.
    """
    with unit_of_work() as uow:
        account_id = from_account if isinstance(from_account, int) else _resolve_wallet(uow.session, from_account).id
        view = _transfer(uow.session, account_id, to, amount, clock.now(), key=key, actor=actor)
        uow.commit()
        return view


# ---------------------------------------------------------------- refunds


def _debit_lot(session: Session, lot_id: int, amount: int, now: datetime, *, key: str,
               memo: str = "", actor: str | None = None) -> tuple[int, bool]:
    money.check_amount(amount)
    if key is None:
        raise ValidationError("a refund debit needs an idempotency key", field="key")
    _check_key(key)
    if isinstance(lot_id, bool) or not isinstance(lot_id, int):
        raise NotFound("no such lot")
    wallet_id = session.execute(select(L.c.wallet_id).where(L.c.id == lot_id)).scalar()
    if wallet_id is None:
        raise NotFound("no such lot")
    wallet = _lock_wallets(session, [wallet_id])[wallet_id]
    replay = session.execute(select(J.c.id, J.c.kind).where(J.c.idempotency_key == key)).first()
    if replay is not None:
        moved: int = session.execute(
            select(func.coalesce(func.sum(P.c.amount), 0)).where(P.c.tx_id == replay.id, P.c.lot_id == lot_id)
        ).scalar_one()
        if replay.kind != "refund_debit" or -moved != amount:
            raise IdempotencyConflict("this idempotency key was used for a different debit")
        return replay.id, False
    balance = wallet.balance
    if wallet.next_expiry_at is not None and wallet.next_expiry_at <= now:
        # Expired credit must not count as available (it would let the debit take credit a hold needs).
        balance -= _expire_wallet(session, wallet_id, now)[1]
    lot = session.execute(select(L).where(L.c.id == lot_id)).one()
    if lot.remaining < amount or lot.expires_at <= now:
        raise InsufficientCredit("that credit has already been used or has expired")
    if balance - wallet.held < amount:
        raise InsufficientCredit("that credit is held by calls in progress")
    tx_id = _new_tx(session, "refund_debit", now, key=key, memo=memo or "refund", actor=actor)
    _post(session, tx_id, [
        {"wallet_id": wallet_id, "lot_id": lot_id, "amount": -amount},
        {"system_account": "refunds", "amount": amount},
    ])
    _take_from_lots(session, [(lot_id, amount)])
    session.execute(update(W).where(W.c.id == wallet_id).values(balance=W.c.balance - amount))
    return tx_id, True


def debit_lot_for_refund(lot_id: int, amount: int, *, key: str, memo: str = "", actor: str | None = None) -> int:
    """Take `amount` of unused credit out of one lot for a refund; return the journal transaction id.

    Only credit that is neither spent, expired nor held can leave. With the same `key` a replay returns the
    first transaction and moves nothing. Raises InsufficientCredit, NotFound, ValidationError.
    """
    with unit_of_work() as uow:
        tx_id, _ = _debit_lot(uow.session, lot_id, amount, clock.now(), key=key, memo=memo, actor=actor)
        uow.commit()
        return tx_id


# ---------------------------------------------------------------- reads


def balance(account: str | int) -> WalletView:
    """Balance, held and available of a wallet (by id, account number or email)."""
    return get_wallet(account)


def lots(account: str | int, *, include_empty: bool = False) -> list[LotView]:
    """The wallet's lots in draw order (soonest expiry first); only those with credit left unless asked."""
    with unit_of_work() as uow:
        wallet = _resolve_wallet(uow.session, account)
        query = select(L).where(L.c.wallet_id == wallet.id)
        if not include_empty:
            query = query.where(L.c.remaining > 0)
        rows = uow.session.execute(query).all()
        views = [_lot_view(r) for r in rows]
        views.sort(key=lambda v: (v.expires_at, 0 if v.source == "promo" else 1, v.created_at, v.id))
        return views


def statement(account: str | int, *, after: str | None = None, limit: int = 50) -> StatementPage:
    """The wallet's journal, newest first, one line per transaction with the running balance after it.

    Keyset-paginated: pass the page's `next_cursor` as `after` for the next (older) page.
    Raises ValidationError on a bad cursor or limit.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
        raise ValidationError("limit must be between 1 and 500", field="limit")
    cursor: int | None = None
    if after is not None:
        # isascii(): str.isdigit() is also true for "²" and other digits that int() refuses or misreads.
        if not isinstance(after, str) or not (after.isascii() and after.isdigit()) or len(after) > 18:
            raise ValidationError("invalid cursor", field="after")
        cursor = int(after)
    with unit_of_work() as uow:
        s = uow.session
        wallet = _resolve_wallet(s, account)
        mine = P.c.wallet_id == wallet.id
        query = (
            select(P.c.tx_id, func.sum(P.c.amount).label("amount"), J.c.kind, J.c.memo, J.c.created_at)
            .join(J, J.c.id == P.c.tx_id)
            .where(mine)
            .group_by(P.c.tx_id, J.c.kind, J.c.memo, J.c.created_at)
            .order_by(P.c.tx_id.desc())
            .limit(limit + 1)
        )
        running = wallet.balance
        if cursor is not None:
            query = query.where(P.c.tx_id < cursor)
            newer: int | Decimal = s.execute(
                select(func.coalesce(func.sum(P.c.amount), 0)).where(mine, P.c.tx_id >= cursor)
            ).scalar_one()
            running -= int(newer)  # PostgreSQL sums bigints as numeric (Decimal)
        rows = s.execute(query).all()
        lines: list[StatementLine] = []
        for row in rows[:limit]:
            lines.append(StatementLine(row.tx_id, row.kind, row.memo, row.created_at, int(row.amount), running))
            running -= int(row.amount)
        next_cursor = str(rows[limit - 1].tx_id) if len(rows) > limit else None
        return StatementPage(lines, next_cursor)


def transactions_of(wallet_id: int) -> list[int]:
    """Journal transaction ids touching the wallet, oldest first (for support and tests)."""
    with unit_of_work() as uow:
        return list(uow.session.execute(
            select(P.c.tx_id).where(P.c.wallet_id == wallet_id).distinct().order_by(P.c.tx_id)
        ).scalars().all())


def system_balances() -> dict[str, int]:
    """The balance of every system account (sum of its postings)."""
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(P.c.system_account, func.sum(P.c.amount)).where(P.c.system_account.is_not(None))
            .group_by(P.c.system_account)
        ).all()
        return {str(name): int(total) for name, total in rows}  # type: ignore[call-overload]


__all__ = [
    "ExpiryResult", "GrantResult", "HoldView", "LotView", "StatementLine", "StatementPage", "TransferView",
    "WalletView", "balance", "debit_lot_for_refund", "expire_lots", "get_wallet", "grant", "lots", "open_wallet",
    "release", "reserve", "settle", "statement", "sweep_holds", "system_balances", "transfer", "wallet_of_user",
]
