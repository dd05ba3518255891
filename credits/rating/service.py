"""Rate plan use cases: atomic import/replace, export, assignment to wallets, and the cached prefix table."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from credits import clock, money
from credits.db import unit_of_work
from credits.errors import NotFound, ValidationError
from credits.ledger.models import Wallet
from credits.rating.engine import PrefixTable, Rate
from credits.rating.models import RatePlan, RateRow

PLANS: Table = RatePlan.__table__  # type: ignore[assignment]
RATES: Table = RateRow.__table__  # type: ignore[assignment]
W: Table = Wallet.__table__  # type: ignore[assignment]
PLAN_NAME_MAX = 64


@dataclass(frozen=True)
class PlanView:
    id: int
    name: str
    currency: str
    version: int
    rates: int


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= PLAN_NAME_MAX:
        raise ValidationError(f"a plan name is 1-{PLAN_NAME_MAX} characters", field="plan")
    return name


def import_plan(name: str, rates: Sequence[Rate], currency: str) -> PlanView:
    """Create or atomically replace the plan `name` with `rates` (all or nothing, one transaction).

    The currency of an existing plan cannot change (wallets rated by it hold that currency).
    Raises ValidationError (empty plan, duplicate prefix+effective_from, currency) before writing anything.
    """
    name = _check_name(name)
    money.check_currency(currency)
    if not rates:
        raise ValidationError("a rate plan needs at least one rate", field="rates")
    table = PrefixTable(rates)  # raises on duplicate prefix + effective_from
    now = clock.now()
    with unit_of_work() as uow:
        s = uow.session
        plan = s.execute(select(PLANS).where(PLANS.c.name == name).with_for_update()).first()
        if plan is None:
            plan_id: int = s.execute(
                insert(PLANS).values(name=name, currency=currency, version=1, created_at=now, updated_at=now)
                .returning(PLANS.c.id)
            ).scalar_one()
            version = 1
        else:
            if plan.currency != currency:
                raise ValidationError(f"plan {name} is in {plan.currency}, not {currency}", field="currency")
            plan_id, version = plan.id, plan.version + 1
            s.execute(delete(RATES).where(RATES.c.plan_id == plan_id))
            s.execute(update(PLANS).where(PLANS.c.id == plan_id).values(version=version, updated_at=now))
        rows = [
            {"plan_id": plan_id, "prefix": r.prefix, "destination": r.destination,
             "rate_per_minute": r.rate_per_minute, "connect_fee": r.connect_fee,
             "first_increment_s": r.first_increment_s, "next_increment_s": r.next_increment_s,
             "effective_from": r.effective_from}
            for r in rates
        ]
        for start in range(0, len(rows), 5000):
            s.execute(insert(RATES), rows[start:start + 5000])
        uow.commit()
    # This process has the new table already: the first call rated with it need not load it again.
    with _cache_lock:
        _cache[plan_id] = (version, table)
    return PlanView(plan_id, name, currency, version, len(rates))


def _load_rates(session: Session, plan_id: int) -> list[Rate]:
    rows = session.execute(select(RATES).where(RATES.c.plan_id == plan_id).order_by(RATES.c.id)).all()
    return [
        Rate(r.prefix, r.destination, r.rate_per_minute, r.connect_fee, r.first_increment_s, r.next_increment_s,
             r.effective_from)
        for r in rows
    ]


def export_plan(name: str) -> tuple[PlanView, list[Rate]]:
    """The plan and its rates, for CSV export. Raises NotFound."""
    with unit_of_work() as uow:
        plan = uow.session.execute(select(PLANS).where(PLANS.c.name == _check_name(name))).first()
        if plan is None:
            raise NotFound(f"no rate plan named {name}")
        rates = _load_rates(uow.session, plan.id)
        return PlanView(plan.id, plan.name, plan.currency, plan.version, len(rates)), rates


def list_plans() -> list[PlanView]:
    with unit_of_work() as uow:
        counts = (
            select(RATES.c.plan_id, func.count().label("n")).group_by(RATES.c.plan_id).subquery()
        )
        rows = uow.session.execute(
            select(PLANS, func.coalesce(counts.c.n, 0).label("n")).outerjoin(counts, counts.c.plan_id == PLANS.c.id)
            .order_by(PLANS.c.name)
        ).all()
        return [PlanView(r.id, r.name, r.currency, r.version, int(r.n)) for r in rows]


def plan_id_by_name(session: Session, name: str) -> int:
    plan_id = session.execute(select(PLANS.c.id).where(PLANS.c.name == _check_name(name))).scalar()
    if plan_id is None:
        raise NotFound(f"no rate plan named {name}")
    return int(plan_id)


def assign_plan(account_wallet_id: int, name: str) -> None:
    """Rate the wallet's calls with plan `name`. Raises NotFound, ValidationError on a currency mismatch."""
    with unit_of_work() as uow:
        _assign(uow.session, account_wallet_id, name)
        uow.commit()


def _assign(s: Session, wallet_id: int, name: str) -> None:
    plan = s.execute(select(PLANS).where(PLANS.c.name == _check_name(name))).first()
    if plan is None:
        raise NotFound(f"no rate plan named {name}")
    wallet = s.execute(select(W.c.currency).where(W.c.id == wallet_id)).first()
    if wallet is None:
        raise NotFound("no such wallet")
    if wallet.currency != plan.currency:
        raise ValidationError(f"plan {name} is in {plan.currency}; the wallet holds {wallet.currency}", field="plan")
    s.execute(update(W).where(W.c.id == wallet_id).values(rate_plan_id=plan.id))


_cache: dict[int, tuple[int, PrefixTable]] = {}
_cache_lock = threading.Lock()


def prefix_table(session: Session, plan_id: int, version: int) -> PrefixTable:
    """The plan's prefix table at `version`, loaded once per process per version (thread-safe)."""
    cached = _cache.get(plan_id)
    if cached is not None and cached[0] == version:
        return cached[1]
    with _cache_lock:
        cached = _cache.get(plan_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        table = PrefixTable(_load_rates(session, plan_id))
        _cache[plan_id] = (version, table)
        return table


def cached_prefix_table(plan_id: int, version: int) -> PrefixTable | None:
    """The plan's prefix table at `version` if this process has it loaded already, else None (reads nothing)."""
    cached = _cache.get(plan_id)
    return cached[1] if cached is not None and cached[0] == version else None


def clear_cache() -> None:
    """Forget every cached prefix table. The cache trusts (plan id, version) to name one set of rates, which
    holds for the life of a database; a new app (perhaps on another, or an emptied, database) starts afresh."""
    with _cache_lock:
        _cache.clear()
