"""Call charging use cases for the switch: authorize, update, complete, batch CDRs, balance, quote, history.

Each public function is one transaction. Authorize locks the caller's wallet, rates the callee with the
wallet's plan, and reserves a hold covering the whole allowed duration, so simultaneous calls can never
overspend. Complete settles that hold with the call's actual cost and stores the call record.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Row, Table, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from credits import clock, config, crypto, db, money
from credits.accounts.models import User
from credits.calls import fastpath
from credits.calls.models import DISPOSITIONS, Call, CallerNumber
from credits.db import insert_for, unit_of_work
from credits.errors import Conflict, NotFound, ValidationError
from credits.ledger import charging
from credits.ledger.models import Hold, Lot, Wallet
from credits.rating import engine
from credits.rating.engine import Rate
from credits.rating.models import DEFAULT_PLAN, RatePlan
from credits.rating.service import prefix_table

W: Table = Wallet.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]
H: Table = Hold.__table__  # type: ignore[assignment]
L: Table = Lot.__table__  # type: ignore[assignment]
C: Table = Call.__table__  # type: ignore[assignment]
CN: Table = CallerNumber.__table__  # type: ignore[assignment]
PLANS: Table = RatePlan.__table__  # type: ignore[assignment]

MAX_DURATION_INPUT_S = 86_400
MAX_BATCH = 1000


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class AuthorizeResult:
    call_id: str
    authorized: bool
    max_duration_s: int
    reason: str | None = None
    reserved: int = 0
    currency: str | None = None
    rate: Rate | None = None
    balance: int | None = None
    available: int | None = None


@dataclass(frozen=True)
class CompleteResult:
    call_id: str
    charged: int
    billed_duration_s: int
    balance: int
    flagged: bool = False


@dataclass(frozen=True)
class CdrResult:
    call_id: str | None
    status: str  # charged | duplicate | rejected
    charged: int = 0
    error: str | None = None


@dataclass(frozen=True)
class BalanceResult:
    account: str
    balance: int
    available: int
    currency: str
    next_expiry_at: datetime | None


@dataclass(frozen=True)
class QuoteResult:
    authorized: bool
    max_duration_s: int
    reason: str | None
    currency: str | None
    rate: Rate | None
    available: int | None


@dataclass(frozen=True)
class CallRecord:
    id: int
    call_id: str
    caller: str
    callee: str
    status: str
    authorized_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    duration_s: int | None
    billed_s: int | None
    cost: int | None
    charged: int | None
    disposition: str | None
    destination: str
    rate_per_minute: int
    flagged: bool


@dataclass(frozen=True)
class CallPage:
    records: list[CallRecord]
    next_cursor: str | None = None
    currency: str = "USD"
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- validation


def check_call_id(call_id: object) -> str:
    """A call id is 1-128 printable ASCII characters."""
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128 or not all(" " <= ch <= "~" for ch in call_id):
        raise ValidationError("call_id must be 1-128 printable characters", field="call_id")
    return call_id


def check_duration(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DURATION_INPUT_S:
        raise ValidationError(f"{name} must be an integer from 0 to {MAX_DURATION_INPUT_S}", field=name)
    return value


def e164(number: object, name: str = "caller") -> str:
    """The switch's number as stored: '+' and 1-20 digits (accepting +, 00 and 011 prefixes)."""
    if not isinstance(number, str):
        raise ValidationError(f"{name} must be a string of digits", field=name)
    return "+" + engine.normalise_number(number, name)


def normalise_caller_number(number: str, region: str | None = None) -> str:
    """Normalise a number a customer registers to E.164 with the phonenumbers library; ValidationError if
    it is not a possible number."""
    import phonenumbers  # its metadata takes a while to import: only registering a number needs it

    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError("not a phone number in international format (+country code)", field="number") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise ValidationError("not a possible phone number", field="number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# ---------------------------------------------------------------- wallet lookup


def _wallet_query(caller: str | None, account: str | None, *, many: bool = False) -> Any:
    """The wallet named by caller number or account, with its owner's status and its plan (or "default");
    with `many`, the query without a condition, for the caller to add one."""
    plan_join = or_(
        PLANS.c.id == W.c.rate_plan_id,
        # The default plan rates only wallets of its own currency: no implicit exchange.
        and_(W.c.rate_plan_id.is_(None), PLANS.c.name == DEFAULT_PLAN, PLANS.c.currency == W.c.currency),
    )
    query = (
        select(W.c.id, W.c.account_number, W.c.balance, W.c.held, W.c.currency, W.c.next_expiry_at,
               W.c.max_concurrent_calls, U.c.status, PLANS.c.id.label("plan_id"), PLANS.c.version.label("plan_version"))
        .join(U, U.c.id == W.c.user_id)
        .outerjoin(PLANS, plan_join)
    )
    if many:
        return query
    if account:
        return query.where(W.c.account_number == account)
    index = crypto.blind_index("phone", caller or "")
    return query.where(W.c.id == select(CN.c.wallet_id).where(CN.c.number_bidx == index).scalar_subquery())


def _find_wallet(session: Session, caller: str | None, account: str | None, lock: bool) -> Row[Any] | None:
    query = _wallet_query(caller, account)
    if lock:
        query = query.with_for_update(of=W)
    return session.execute(query).first()


def _status_refusal(status: str) -> str | None:
    if status == "closed":
        return "account_closed"
    if status == "frozen":
        return "account_frozen"
    return None


def _rate_for(session: Session, wallet: Row[Any], callee: str, on: date) -> Rate | None:
    if wallet.plan_id is None:
        return None
    return prefix_table(session, wallet.plan_id, wallet.plan_version).lookup(callee.lstrip("+"), on)


def _active_calls(session: Session, wallet_id: int) -> int:
    """Calls of the wallet in progress: authorised, not completed, and still holding credit (a call whose hold
    the sweep expired is over, whether or not it has been marked abandoned yet)."""
    return int(session.execute(
        select(func.count()).select_from(C).join(H, H.c.id == C.c.hold_id)
        .where(C.c.wallet_id == wallet_id, C.c.status == "authorized", H.c.status == "active")
    ).scalar_one())


def _share(session: Session, wallet: Row[Any], available: int) -> tuple[int, str | None]:
    """The credit one new call may reserve, honouring max_concurrent_calls (available / (N - k))."""
    limit = wallet.max_concurrent_calls
    if not limit:
        return available, None
    in_progress = _active_calls(session, wallet.id)
    if in_progress >= limit:
        return 0, "too_many_calls"
    return available // (limit - in_progress), None


def _rate_of_call(row: Any) -> Rate:
    return Rate(row.rate_prefix, row.rate_destination, row.rate_per_minute, row.connect_fee, row.first_increment_s,
                row.next_increment_s)


# ---------------------------------------------------------------- authorize


def _stored_answer(session: Session, call_id: str, wallet_id: int | None) -> AuthorizeResult | None:
    row = session.execute(
        select(C, W.c.balance, W.c.held, W.c.currency).join(W, W.c.id == C.c.wallet_id).where(C.c.call_id == call_id)
    ).first()
    if row is None:
        return None
    if row.source != "switch":  # reported as a CDR: it was never authorised, and is over
        raise Conflict("this call_id is already in use")
    if wallet_id is not None and row.wallet_id != wallet_id:
        raise Conflict("this call_id was authorised for another account")
    return AuthorizeResult(call_id, True, row.max_duration_s, None, row.reserved, row.currency, _rate_of_call(row),
                           row.balance, row.balance - row.held)


def _check_account(account: object) -> str | None:
    if account is not None and (not isinstance(account, str) or not (account.isascii() and account.isdigit())
                                or len(account) > 16):
        raise ValidationError("account must be an account number", field="account")
    return account


def _authorize_fast(call_id: str, caller: str | None, callee: str, account: str | None, now: datetime,
                    precheck: db.Precheck) -> AuthorizeResult | None:
    fast = fastpath.authorize(call_id, caller, callee, account, now, precheck)
    if isinstance(fast, fastpath.Refused):
        return AuthorizeResult(call_id, False, 0, fast.reason)
    if fast is None:
        return None
    return AuthorizeResult(call_id, True, fast.max_duration_s, None, fast.reserved, fast.currency, fast.rate,
                           fast.balance, fast.available)


def authorize(call_id: str, caller: str | None, callee: str, account: str | None = None, *,
              precheck: db.Precheck = db.NO_PRECHECK) -> AuthorizeResult:
    """Decide whether a call may go ahead and for how long, reserving the credit for that long.

    The account is `account` if given, else the wallet with `caller` among its registered numbers (the
    caller may then be left out). Refusals are answers, not errors: authorized False with a reason from
    REFUSALS. A retry with the same call_id returns the first answer and reserves nothing more. Raises
    ValidationError on malformed input and Conflict when the call_id was authorised for another account
    or already names a call reported as a CDR. A `precheck` (the switch's API key, credits.db.Precheck)
    passes before anything is read for the decision or written; what it raises propagates.
    """
    call_id = check_call_id(call_id)
    caller_n = e164(caller, "caller") if caller is not None else None
    callee_n = e164(callee, "callee")
    account = _check_account(account)
    if caller_n is None and account is None:
        raise ValidationError("give the caller number or the account", field="caller")
    cfg = config.current()
    now = clock.now()
    answer = _authorize_fast(call_id, caller_n, callee_n, account, now, precheck) if fastpath.active() else None
    if answer is not None:
        return answer
    precheck.ensure()
    with unit_of_work() as uow:
        s = uow.session
        wallet = _find_wallet(s, caller_n, account, lock=True)
        if wallet is None:
            return AuthorizeResult(call_id, False, 0, "unknown_caller")

        def refuse(reason: str) -> AuthorizeResult:
            return _stored_answer(s, call_id, wallet.id) or AuthorizeResult(call_id, False, 0, reason)

        refusal = _status_refusal(wallet.status)
        if refusal:
            return refuse(refusal)
        rate = _rate_for(s, wallet, callee_n, now.date())
        if rate is None:
            return refuse("no_rate")
        funds = charging.expire_due(s, wallet, now)
        available = funds.available
        share, refusal = _share(s, wallet, available)
        if refusal:
            return refuse(refusal)
        max_d = engine.max_duration(rate, share, cfg.max_call_duration_s)
        if max_d == 0:
            return refuse("insufficient_credit")
        amount = engine.reserve_amount(rate, max_d)
        if amount == 0:  # a free destination: nothing to hold, but the call is still tracked
            amount = 1 if available >= 1 else 0
        if amount == 0:
            return refuse("insufficient_credit")
        deadline = now + timedelta(seconds=max_d + cfg.hold_grace_s)
        hold_id = charging.insert_hold(s, wallet.id, f"call:{call_id}", amount, now, deadline)
        if hold_id is None:
            stored = _stored_answer(s, call_id, wallet.id)
            if stored is None:
                raise Conflict("this call_id is already in use")
            return stored
        inserted = s.execute(insert_for(uow.dialect)(C).values(
            call_id=call_id, wallet_id=wallet.id, hold_id=hold_id, source="switch", caller=caller_n or "",
            callee=callee_n, status="authorized", authorized_at=now, max_duration_s=max_d, reserved=amount,
            rate_prefix=rate.prefix, rate_destination=rate.destination, rate_per_minute=rate.rate_per_minute,
            connect_fee=rate.connect_fee, first_increment_s=rate.first_increment_s,
            next_increment_s=rate.next_increment_s, flagged=False,
        ).on_conflict_do_nothing(index_elements=["call_id"]).returning(C.c.id)).scalar()
        if inserted is None:  # a call reported earlier as a CDR (no hold): leaving rolls the new hold back
            raise Conflict("this call_id is already in use")
        uow.commit()
        return AuthorizeResult(call_id, True, max_d, None, amount, wallet.currency, rate, funds.balance,
                               available - amount)


# ---------------------------------------------------------------- update and complete


def _lock_call(session: Session, call_id: str) -> tuple[Row[Any], Row[Any]]:
    """Lock the call's wallet, then read the call with its hold. Raises NotFound."""
    check_call_id(call_id)
    wallet = session.execute(
        select(W).where(W.c.id == select(C.c.wallet_id).where(C.c.call_id == call_id).scalar_subquery())
        .with_for_update()
    ).first()
    if wallet is None:
        raise NotFound("no call with that call_id")
    call = session.execute(
        select(C, H.c.id.label("h_id"), H.c.amount.label("h_amount"), H.c.status.label("h_status"),
               H.c.created_at.label("h_created_at"), H.c.finished_at.label("h_finished_at"))
        .outerjoin(H, H.c.id == C.c.hold_id).where(C.c.call_id == call_id)
    ).one()
    return wallet, call


@dataclass(frozen=True)
class _HoldRow:
    id: int
    amount: int
    status: str
    created_at: datetime
    finished_at: datetime | None


def _hold_of(call: Row[Any]) -> _HoldRow | None:
    if call.h_id is None:
        return None
    return _HoldRow(call.h_id, call.h_amount, call.h_status, call.h_created_at, call.h_finished_at)


def update_call(call_id: str, elapsed_s: int) -> AuthorizeResult:
    """Recompute the total allowed duration (from answer) of a call in progress and resize its hold.

    Credit bought during the call extends it. authorized is False once the call may not go on (elapsed
    reached the limit, or the call is no longer in progress). Raises NotFound, ValidationError.
    """
    check_duration(elapsed_s, "elapsed_s")
    cfg = config.current()
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        wallet, call = _lock_call(s, call_id)
        hold = _hold_of(call)
        if call.status != "authorized" or hold is None or hold.status != "active":
            return AuthorizeResult(call_id, False, call.max_duration_s, "call_not_in_progress")
        rate = _rate_of_call(call)
        available = charging.expire_due(s, wallet, now).available
        limit = wallet.max_concurrent_calls
        extra = available
        if limit:
            others = _active_calls(s, wallet.id) - 1
            extra = available // max(1, limit - others)
        new_max = engine.max_duration(rate, hold.amount + extra, cfg.max_call_duration_s)
        if new_max > call.max_duration_s:
            new_amount = max(hold.amount, engine.reserve_amount(rate, new_max))
            deadline = now - timedelta(seconds=elapsed_s) + timedelta(seconds=new_max + cfg.hold_grace_s)
            charging.resize_hold(s, wallet.id, hold.id, hold.amount, new_amount, deadline)
            s.execute(update(C).where(C.c.id == call.id).values(max_duration_s=new_max, reserved=new_amount))
            uow.commit()
            reserved, available = new_amount, available - (new_amount - hold.amount)
        else:
            new_max, reserved = call.max_duration_s, call.reserved
        return AuthorizeResult(call_id, new_max > elapsed_s, new_max, None, reserved, wallet.currency, rate,
                               wallet.balance, available)


#: The range of a call's answer and end times: the call's other end (an answer time plus a duration of up to
#: MAX_DURATION_INPUT_S, or an end time less one) must still be a time. Beyond it, "9999-12-31T23:59:59-14:00"
#: (no UTC equivalent) or "0001-01-01T00:00:00Z" less a duration overflowed in the arithmetic, a 500.
EARLIEST_CALL_TIME = datetime.min.replace(tzinfo=UTC) + timedelta(seconds=MAX_DURATION_INPUT_S)
LATEST_CALL_TIME = datetime.max.replace(tzinfo=UTC) - timedelta(seconds=MAX_DURATION_INPUT_S)


def _parse_time(value: object, name: str) -> datetime | None:
    """An ISO-8601 time with a timezone, as UTC, within the call time range; None stays None.

    Raises ValidationError (not a time, no timezone, out of range).
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError(f"{name} must be an ISO-8601 time", field=name) from exc
    else:
        raise ValidationError(f"{name} must be an ISO-8601 time", field=name)
    if parsed.tzinfo is None:
        raise ValidationError(f"{name} must carry a timezone (e.g. Z)", field=name)
    try:
        utc = clock.utc(parsed)
    except OverflowError:
        utc = None  # no UTC equivalent (year 1 ahead of UTC, year 9999 behind it)
    if utc is None or not EARLIEST_CALL_TIME <= utc <= LATEST_CALL_TIME:
        raise ValidationError(f"{name} is out of range", field=name)
    return utc


def complete(call_id: str, duration_s: int, disposition: str, *, answered_at: object = None,
             ended_at: object = None, end_reason: str | None = None,
             precheck: db.Precheck = db.NO_PRECHECK) -> CompleteResult:
    """Charge a finished call and store its record.

    Anything but an answered call with duration > 0 charges nothing and releases the hold. A repeat with
    the same duration and disposition returns the first answer; a different one raises Conflict. A call the
    sweep abandoned is still charged (from available credit); cost that cannot be covered goes to
    credit_loss and the call is flagged. Raises NotFound, ValidationError. A `precheck` as for authorize.
    """
    check_call_id(call_id)
    check_duration(duration_s, "duration_s")
    if disposition not in DISPOSITIONS:
        raise ValidationError(f"disposition is one of {', '.join(DISPOSITIONS)}", field="disposition")
    if end_reason is not None and (not isinstance(end_reason, str) or len(end_reason) > 32):
        raise ValidationError("end_reason is at most 32 characters", field="end_reason")
    answered = _parse_time(answered_at, "answered_at")
    ended = _parse_time(ended_at, "ended_at")
    now = clock.now()
    if fastpath.active():
        fast = fastpath.complete(call_id, duration_s, disposition, answered, ended, end_reason, now, precheck)
        if fast is not None:
            return CompleteResult(call_id, fast.charged, fast.billed_s, fast.balance, fast.flagged)
    precheck.ensure()
    with unit_of_work() as uow:
        s = uow.session
        wallet, call = _lock_call(s, call_id)
        if call.status == "completed":
            if call.duration_s != duration_s or call.disposition != disposition:
                raise Conflict("this call was completed with a different duration or disposition")
            return CompleteResult(call_id, call.charged or 0, call.billed_s or 0, wallet.balance, call.flagged)
        rate = _rate_of_call(call)
        chargeable = disposition == "answered" and duration_s > 0
        billed = engine.billed_seconds(duration_s, rate.first_increment_s, rate.next_increment_s) if chargeable else 0
        cost = engine.cost(rate, duration_s) if chargeable else 0
        hold = _hold_of(call)
        late = call.status == "abandoned" or (hold is not None and hold.status == "expired")
        funds = charging.expire_due(s, wallet, now)
        if cost == 0:
            if hold is not None:
                charging.release_hold(s, wallet.id, hold, now)
            charged, shortfall, balance = 0, 0, funds.balance
        else:
            result = charging.charge(s, funds, cost, now, hold=hold, memo=f"call {call.callee} {billed}s")
            charged, shortfall, balance = result.charged, result.shortfall, funds.balance - result.charged
        flag_reason = "credit_shortfall" if shortfall else ("completed_after_abandon" if late and cost else None)
        ended = ended or now
        if answered is None and chargeable:
            answered = ended - timedelta(seconds=duration_s)
        s.execute(update(C).where(C.c.id == call.id).values(
            status="completed", answered_at=answered, ended_at=ended, completed_at=now, duration_s=duration_s,
            billed_s=billed, cost=cost, charged=charged, disposition=disposition, end_reason=end_reason,
            flagged=bool(flag_reason) or call.flagged, flag_reason=flag_reason or call.flag_reason,
        ))
        uow.commit()
        return CompleteResult(call_id, charged, billed, balance, bool(flag_reason))


def mark_abandoned(now: datetime | None = None) -> int:
    """Mark calls whose hold the sweep expired as abandoned; return how many (part of the sweep-holds job)."""
    with unit_of_work() as uow:
        expired = select(H.c.id).where(H.c.id == C.c.hold_id, H.c.status == "expired").exists()
        count = uow.session.execute(
            update(C).where(C.c.status == "authorized", expired).values(status="abandoned")
        ).rowcount  # type: ignore[attr-defined]
        uow.commit()
        return int(count)


# ---------------------------------------------------------------- batch CDRs


_CDR_FIELDS = frozenset({"call_id", "caller", "callee", "duration_s", "answered_at", "disposition", "account"})


@dataclass(frozen=True)
class _Cdr:
    index: int
    call_id: str
    caller: str | None
    callee: str
    duration: int
    disposition: str
    answered: datetime
    account: str | None


def _parse_cdr(index: int, item: Any) -> _Cdr | CdrResult:
    """Check one CDR on its own: the parsed item, or its rejection."""
    if not isinstance(item, dict):
        return CdrResult(None, "rejected", error="each CDR is an object")
    call_id = item.get("call_id")
    try:
        unknown = set(item) - _CDR_FIELDS
        if unknown:
            raise ValidationError(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
        call_id = check_call_id(call_id)
        account = _check_account(item.get("account"))
        caller = None if account is not None and item.get("caller") is None else e164(item.get("caller"), "caller")
        callee = e164(item.get("callee"), "callee")
        duration = check_duration(item.get("duration_s"), "duration_s")
        disposition = item.get("disposition", "answered")
        if disposition not in DISPOSITIONS:
            raise ValidationError(f"disposition is one of {', '.join(DISPOSITIONS)}")
        answered = _parse_time(item.get("answered_at"), "answered_at")
        if answered is None:
            raise ValidationError("answered_at is required")
    except ValidationError as exc:
        return CdrResult(call_id if isinstance(call_id, str) else None, "rejected", error=exc.message)
    return _Cdr(index, call_id, caller, callee, duration, disposition, answered, account)


def _lock_cdr_wallets(s: Session, cdrs: Sequence[_Cdr]) -> tuple[dict[str, Row[Any]], dict[str, Row[Any]]]:
    """Lock, in id order, every wallet the CDRs name; return them by caller number and by account number."""
    callers = {c.caller for c in cdrs if c.account is None and c.caller is not None}
    indexes = {crypto.blind_index("phone", number): number for number in callers}
    wallet_of_caller: dict[str, int] = {}
    if indexes:
        for r in s.execute(
            select(CN.c.number_bidx, CN.c.wallet_id).where(CN.c.number_bidx.in_(sorted(indexes)))
        ).all():
            wallet_of_caller[indexes[r.number_bidx]] = r.wallet_id
    accounts = sorted({c.account for c in cdrs if c.account is not None})
    ids = sorted(set(wallet_of_caller.values()))
    if not ids and not accounts:
        return {}, {}
    rows = s.execute(
        _wallet_query(None, None, many=True).where(or_(W.c.id.in_(ids), W.c.account_number.in_(accounts)))
        .order_by(W.c.id).with_for_update(of=W)
    ).all()
    by_id = {row.id: row for row in rows}
    by_caller = {number: by_id[wallet_id] for number, wallet_id in wallet_of_caller.items() if wallet_id in by_id}
    return by_caller, {row.account_number: row for row in rows}


def import_cdrs(items: Sequence[Any]) -> list[CdrResult]:
    """Rate and charge calls that were never authorised (switches that only send CDRs), in one transaction.

    One result per item, in order: charged, duplicate (call_id seen before, in this batch or earlier) or
    rejected (with the error); a bad item is rejected on its own and the others still count. Each call is
    rated on the day it was answered and charged from the credit available (lots live then), what cannot be
    covered going to credit_loss with the call flagged. Set-based: the statements do not grow with the batch.
    Raises ValidationError for more than 1000 items.
    """
    if not isinstance(items, list | tuple) or len(items) > MAX_BATCH:
        raise ValidationError(f"cdrs is a list of at most {MAX_BATCH} items", field="cdrs")
    now = clock.now()
    results: list[CdrResult | None] = [None] * len(items)
    cdrs: list[_Cdr] = []
    for i, item in enumerate(items):
        parsed = _parse_cdr(i, item)
        if isinstance(parsed, CdrResult):
            results[i] = parsed
        else:
            cdrs.append(parsed)
    with unit_of_work() as uow:
        s = uow.session
        by_caller, by_account = _lock_cdr_wallets(s, cdrs)
        rows: dict[str, dict[str, Any]] = {}
        rated: dict[str, tuple[_Cdr, Row[Any], int]] = {}
        for c in cdrs:
            wallet = by_account.get(c.account) if c.account is not None else by_caller.get(c.caller or "")
            if wallet is None:
                results[c.index] = CdrResult(c.call_id, "rejected", error="unknown_caller")
                continue
            rate = _rate_for(s, wallet, c.callee, c.answered.date())
            if rate is None:
                results[c.index] = CdrResult(c.call_id, "rejected", error="no_rate")
                continue
            if c.call_id in rows:
                results[c.index] = CdrResult(c.call_id, "duplicate")
                continue
            chargeable = c.disposition == "answered" and c.duration > 0
            cost = engine.cost(rate, c.duration) if chargeable else 0
            billed = engine.billed_seconds(c.duration, rate.first_increment_s, rate.next_increment_s) \
                if chargeable else 0
            rows[c.call_id] = dict(
                call_id=c.call_id, wallet_id=wallet.id, hold_id=None, source="cdr", caller=c.caller or "",
                callee=c.callee, status="completed", authorized_at=c.answered,
                answered_at=c.answered if chargeable else None, ended_at=c.answered + timedelta(seconds=c.duration),
                completed_at=now, max_duration_s=0, reserved=0, rate_prefix=rate.prefix,
                rate_destination=rate.destination, rate_per_minute=rate.rate_per_minute,
                connect_fee=rate.connect_fee, first_increment_s=rate.first_increment_s,
                next_increment_s=rate.next_increment_s, duration_s=c.duration, billed_s=billed, cost=cost,
                charged=0, disposition=c.disposition, end_reason="cdr", flagged=False, flag_reason=None,
            )
            rated[c.call_id] = (c, wallet, cost)
        inserted: dict[str, int] = {}
        if rows:
            # In call_id order, so that two batches naming the same calls wait for each other without deadlock.
            inserted = {r.call_id: r.id for r in charging.bulk_insert(
                s, C, [rows[call_id] for call_id in sorted(rows)], returning=(C.c.call_id, C.c.id),
                skip_conflicts_on=("call_id",),
            )}
        to_charge = [rated[call_id] for call_id in rows if call_id in inserted and rated[call_id][2] > 0]
        to_charge.sort(key=lambda t: t[0].index)
        funds = {wallet.id: charging.expire_due(s, wallet, now)
                 for wallet in {w.id: w for _, w, _ in to_charge}.values()}
        charges = charging.charge_many(s, funds, [
            charging.UsageCharge(wallet.id, cost, c.answered, f"cdr:{c.call_id}",
                                 f"cdr {c.callee} {rows[c.call_id]['billed_s']}s")
            for c, wallet, cost in to_charge], now)
        outcomes = []
        for (c, _, _), result in zip(to_charge, charges, strict=True):
            outcomes.append({"id": inserted[c.call_id], "charged": result.charged, "flagged": bool(result.shortfall),
                             "flag_reason": "credit_shortfall" if result.shortfall else None})
            results[c.index] = CdrResult(c.call_id, "charged", result.charged)
        charging.bulk_update(s, C, "id", outcomes)
        for call_id, (c, _, _) in rated.items():
            if results[c.index] is None:
                results[c.index] = CdrResult(call_id, "charged" if call_id in inserted else "duplicate")
        uow.commit()
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------- balance and quote


def balance(caller: str | None = None, account: str | None = None) -> BalanceResult:
    """Balance and available credit of the wallet named by caller number or account. Raises NotFound."""
    if not caller and not account:
        raise ValidationError("give caller or account")
    caller_n = e164(caller, "caller") if caller else None
    now = clock.now()
    with unit_of_work() as uow:
        wallet = _find_wallet(uow.session, caller_n, account, lock=False)
        if wallet is None:
            raise NotFound("unknown caller or account")
        funds = charging.live_funds(uow.session, wallet, now)
        next_expiry = wallet.next_expiry_at
        if next_expiry is not None and next_expiry <= now:
            next_expiry = uow.session.execute(
                select(func.min(L.c.expires_at)).where(L.c.wallet_id == wallet.id, L.c.remaining > 0,
                                                       L.c.expires_at > now)
            ).scalar()
        return BalanceResult(wallet.account_number, funds.balance, funds.available, wallet.currency, next_expiry)


def quote(caller: str | None, callee: str, account: str | None = None) -> QuoteResult:
    """The rate and the max duration a call would get now, reserving nothing (for IVR announcements)."""
    if not caller and not account:
        raise ValidationError("give caller or account")
    caller_n = e164(caller, "caller") if caller else None
    callee_n = e164(callee, "callee")
    cfg = config.current()
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        wallet = _find_wallet(s, caller_n, account, lock=False)
        if wallet is None:
            return QuoteResult(False, 0, "unknown_caller", None, None, None)
        refusal = _status_refusal(wallet.status)
        rate = _rate_for(s, wallet, callee_n, now.date())
        available = charging.live_funds(s, wallet, now).available
        if refusal or rate is None:
            return QuoteResult(False, 0, refusal or "no_rate", wallet.currency, rate, available)
        share, refusal = _share(s, wallet, available)
        max_d = 0 if refusal else engine.max_duration(rate, share, cfg.max_call_duration_s)
        reason = refusal or (None if max_d else "insufficient_credit")
        return QuoteResult(max_d > 0, max_d, reason, wallet.currency, rate, available)


# ---------------------------------------------------------------- caller numbers


def register_caller_number(wallet_id: int, number: str) -> str:
    """Register a caller number to a wallet (E.164, unique across accounts); return it normalised.

    Raises ValidationError (not a number) and Conflict (registered to an account already).
    """
    with unit_of_work() as uow:
        normalised = _register_number(uow.session, wallet_id, number, clock.now())
        uow.commit()
        return normalised


def _register_number(s: Session, wallet_id: int, number: str, now: datetime) -> str:
    normalised = normalise_caller_number(number)
    index = crypto.blind_index("phone", normalised)
    owner = s.execute(select(CN.c.wallet_id).where(CN.c.number_bidx == index)).scalar()
    if owner is not None:
        if owner == wallet_id:
            return normalised
        raise Conflict("this number is registered to another account")
    if s.execute(select(W.c.id).where(W.c.id == wallet_id)).scalar() is None:
        raise NotFound("no such wallet")
    number_id: int = s.execute(
        insert(CN).values(wallet_id=wallet_id, number_enc="", number_bidx=index, created_at=now).returning(CN.c.id)
    ).scalar_one()
    s.execute(update(CN).where(CN.c.id == number_id).values(
        number_enc=crypto.encrypt(normalised, "caller_numbers", "number_enc", number_id)))
    return normalised


def caller_numbers(wallet_id: int) -> list[str]:
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(CN.c.id, CN.c.number_enc).where(CN.c.wallet_id == wallet_id).order_by(CN.c.id)).all()
        return [str(crypto.decrypt(r.number_enc, "caller_numbers", "number_enc", r.id)) for r in rows]


def set_max_concurrent_calls(wallet_id: int, limit: int | None) -> None:
    """Let at most `limit` calls share the wallet's credit at once (None: no limit)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000):
        raise ValidationError("max_concurrent_calls is 1-1000 or empty", field="max_concurrent_calls")
    with unit_of_work() as uow:
        done = uow.session.execute(update(W).where(W.c.id == wallet_id).values(max_concurrent_calls=limit)).rowcount  # type: ignore[attr-defined]
        if not done:
            raise NotFound("no such wallet")
        uow.commit()


# ---------------------------------------------------------------- history


def _record(row: Any) -> CallRecord:
    return CallRecord(row.id, row.call_id, row.caller, row.callee, row.status, row.authorized_at, row.answered_at,
                      row.ended_at, row.duration_s, row.billed_s, row.cost, row.charged, row.disposition,
                      row.rate_destination, row.rate_per_minute, row.flagged)


def call_history(wallet_id: int, *, start: datetime | None = None, end: datetime | None = None,
                 after: str | None = None, limit: int = 50) -> CallPage:
    """The wallet's calls, newest first, filtered by authorisation time [start, end), keyset-paginated.

    Pass a page's `next_cursor` as `after` for the next (older) page. Raises ValidationError (limit, cursor,
    a range without timezone, with no UTC equivalent, or backwards) and NotFound (wallet).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationError("limit must be between 1 and 1000", field="limit")
    for name, bound in (("start", start), ("end", end)):
        if bound is not None and (not isinstance(bound, datetime) or bound.tzinfo is None):
            raise ValidationError(f"{name} must be a time with a timezone", field=name)
        try:
            if bound is not None:
                clock.utc(bound)  # the query compares in UTC
        except OverflowError as exc:  # no UTC equivalent (year 1 ahead of UTC, year 9999 behind it): was a 500
            raise ValidationError(f"{name} is out of range", field=name) from exc
    if start and end and start >= end:
        raise ValidationError("start must be before end", field="start")
    # ASCII digits that fit a BIGINT: "²".isdigit() is true, and a 19-digit number may overflow the column.
    if after is not None and (not isinstance(after, str) or not (after.isascii() and after.isdigit())
                              or len(after) > 18):
        raise ValidationError("invalid cursor", field="after")
    with unit_of_work() as uow:
        currency = uow.session.execute(select(W.c.currency).where(W.c.id == wallet_id)).scalar()
        if currency is None:
            raise NotFound("no such wallet")
        query = select(C).where(C.c.wallet_id == wallet_id).order_by(C.c.id.desc()).limit(limit + 1)
        if start:
            query = query.where(C.c.authorized_at >= start)
        if end:
            query = query.where(C.c.authorized_at < end)
        if after is not None:
            query = query.where(C.c.id < int(after))
        rows = uow.session.execute(query).all()
        records = [_record(r) for r in rows[:limit]]
        cursor = str(records[-1].id) if len(rows) > limit else None
        return CallPage(records, cursor, str(currency))


CSV_HEADER = ["call_id", "authorized_at", "answered_at", "ended_at", "caller", "callee", "destination", "status",
              "disposition", "duration_s", "billed_s", "rate_per_minute", "cost", "charged", "currency"]


def calls_csv(wallet_id: int, *, start: datetime | None = None, end: datetime | None = None) -> Iterator[str]:
    """The wallet's calls in the date range as CSV lines (header first), newest first, streamed in pages.

    The arguments are checked, and the first page read, before this returns: a bad range raises here
    (ValidationError, NotFound), never halfway through a download.
    """
    first = call_history(wallet_id, start=start, end=end, limit=1000)
    return _csv_pages(wallet_id, start, end, first)


def _csv_pages(wallet_id: int, start: datetime | None, end: datetime | None, page: CallPage) -> Iterator[str]:
    yield _csv_line(CSV_HEADER)
    while True:
        for r in page.records:
            yield _csv_line([
                r.call_id, _iso(r.authorized_at), _iso(r.answered_at), _iso(r.ended_at), r.caller, r.callee,
                r.destination, r.status, r.disposition or "", r.duration_s if r.duration_s is not None else "",
                r.billed_s if r.billed_s is not None else "", money.format_micro(r.rate_per_minute),
                money.format_micro(r.cost) if r.cost is not None else "",
                money.format_micro(r.charged) if r.charged is not None else "", page.currency,
            ])
        if page.next_cursor is None:
            return
        page = call_history(wallet_id, start=start, end=end, after=page.next_cursor, limit=1000)


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value else ""


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_line(values: Sequence[object]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # Neutralise spreadsheet formulas in text cells (CSV injection).
    writer.writerow(["'" + v if isinstance(v, str) and v[:1] in _FORMULA_START and not _numeric(v) else v
                     for v in values])
    return buf.getvalue()


def _numeric(value: str) -> bool:
    return value.lstrip("+-").replace(".", "", 1).isdigit()
