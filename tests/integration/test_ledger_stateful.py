"""Randomised ledger: a Hypothesis state machine drives the services against a small model of DESIGN §3.

The model is plain Python: lots and holds per wallet, the draw order (soonest expiry, promo before paid,
oldest), expiry that keeps what holds made before it still need, transfers that keep the expiry of the lots
drawn from, and both expiry policies. Every step is run on the real services and on the model; after every
step balances, holds, every lot's remaining and expiry, the system accounts and `run_audit()` must agree.

Expiry happens in two places and the model does both: the job (`expire_lots`), and lazily, when a
reservation, settlement, transfer or refund debit touches a wallet whose credit is due (expired credit is
never available, whether or not the job ran). A refused operation changes nothing, so the model tries each
operation on a copy and keeps the copy only when the service accepted it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from credits import config
from credits.errors import InsufficientCredit
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit
from credits.ledger.models import SYSTEM_ACCOUNTS
from tests.conftest import EPOCH, Factory, clean

WALLETS = 3
SETTINGS = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    database=None,  # no example database on disk: the run is hermetic
    suppress_health_check=[HealthCheck.too_slow],
)

AMOUNTS = st.integers(1, 16).map(lambda k: k * 250_000)  # 0.25 .. 4.00, so amounts collide and sum exactly
ODD_AMOUNTS = st.integers(1, 5_000_000)
# Expiries collide (ties go to promo, then the oldest) and the clock catches up with them within a run.
EXPIRY_HOURS = st.sampled_from([2, 12, 24, 24, 48, 72, 168, None])  # None: the default validity (180 days)
ADVANCE_HOURS = st.sampled_from([1, 6, 12, 24, 48])
HOLD_TTL_S = st.sampled_from([3600, 7200, 86400])
SOURCES = st.sampled_from(["purchase", "promo", "credit_note"])
FINISH = st.sampled_from(["zero", "part", "full", "over", "any", "release"])
COUNTER_ACCOUNT = {"purchase": "gateway_clearing", "promo": "promotions", "credit_note": "promotions"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Transfer limits are covered elsewhere; here they would only hide the draw-order behaviour.
    return {"transfer_min": "0.01", "transfer_max": "1000000.00", "transfer_daily_limit": "1000000.00"}


# ---------------------------------------------------------------- the model


@dataclasses.dataclass
class MLot:
    wallet: int
    source: str
    granted: int
    remaining: int
    expires_at: datetime
    created_at: datetime
    seq: int
    id: int | None = None  # the service's lot id, learned when the states are compared

    def row(self) -> tuple[Any, ...]:
        return (self.source, self.granted, self.remaining, self.expires_at, self.created_at)


@dataclasses.dataclass
class MHold:
    key: str
    wallet: int
    amount: int
    created_at: datetime
    expires_at: datetime
    seq: int
    status: str = "active"
    charged: int | None = None
    shortfall: int = 0


class Refused(Exception):
    """The model refuses the operation (the service must raise the matching domain error)."""

    def __init__(self, error: type[Exception], **extra: Any) -> None:
        super().__init__(error.__name__)
        self.error = error
        self.extra = extra


class Model:
    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.lots: list[MLot] = []
        self.holds: dict[str, MHold] = {}
        self.system: Counter[str] = Counter()
        self.seq = 0

    # -- reading

    def wallet_lots(self, w: int) -> list[MLot]:
        return [lot for lot in self.lots if lot.wallet == w]

    def balance(self, w: int) -> int:
        return sum(lot.remaining for lot in self.wallet_lots(w))

    def active_holds(self, w: int) -> list[MHold]:
        return [h for h in self.holds.values() if h.wallet == w and h.status == "active"]

    def held(self, w: int) -> int:
        return sum(h.amount for h in self.active_holds(w))

    def available(self, w: int) -> int:
        return self.balance(w) - self.held(w)

    @staticmethod
    def in_draw_order(lots: list[MLot]) -> list[MLot]:
        return sorted(lots, key=lambda lot: (lot.expires_at, lot.source != "promo", lot.created_at, lot.seq))

    def take(self, lots: list[MLot], amount: int) -> list[tuple[MLot, int]]:
        taken: list[tuple[MLot, int]] = []
        for lot in self.in_draw_order([lot for lot in lots if lot.remaining > 0]):
            if amount == 0:
                break
            part = min(lot.remaining, amount)
            lot.remaining -= part
            amount -= part
            taken.append((lot, part))
        assert amount == 0, "the model drew more than the lots hold"
        return taken

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- writing

    def grant(self, w: int, amount: int, source: str, expires_at: datetime, now: datetime) -> None:
        self.lots.append(MLot(w, source, amount, amount, expires_at, now, self._next_seq()))
        self.system[COUNTER_ACCOUNT[source]] -= amount
        if self.policy == "rolling" and source == "purchase":
            # A purchase extends the wallet's live lots to its expiry; expired ones are not revived.
            for lot in self.wallet_lots(w):
                if lot.remaining > 0 and now < lot.expires_at < expires_at:
                    lot.expires_at = expires_at

    def expire_wallet(self, w: int, now: datetime) -> int:
        """Break the wallet's expired credit except what active holds made before the expiry still need."""
        lots = [lot for lot in self.wallet_lots(w) if lot.remaining > 0]
        if not any(lot.expires_at <= now for lot in lots):
            return 0
        room = {lot.seq: lot.remaining for lot in lots}
        kept = dict.fromkeys(room, 0)
        for hold in sorted(self.active_holds(w), key=lambda h: (h.created_at, h.seq)):
            need = hold.amount
            for lot in self.in_draw_order([lot for lot in lots if lot.expires_at > hold.created_at]):
                part = min(room[lot.seq], need)
                room[lot.seq] -= part
                kept[lot.seq] += part
                need -= part
        broken = 0
        for lot in lots:
            if lot.expires_at <= now and lot.remaining > kept[lot.seq]:
                broken += lot.remaining - kept[lot.seq]
                lot.remaining = kept[lot.seq]
        self.system["breakage"] += broken
        return broken

    def expire_all(self, now: datetime) -> int:
        return sum(self.expire_wallet(w, now) for w in {lot.wallet for lot in self.lots})

    def reserve(self, w: int, key: str, amount: int, now: datetime, ttl_s: int) -> None:
        self.expire_wallet(w, now)
        if self.available(w) < amount:
            raise Refused(InsufficientCredit, available=self.available(w))
        self.holds[key] = MHold(key, w, amount, now, now + timedelta(seconds=ttl_s), self._next_seq())

    def settle(self, key: str, amount: int, now: datetime) -> tuple[int, int]:
        hold = self.holds[key]
        late = hold.status == "expired"
        self.expire_wallet(hold.wallet, now)
        reserved = 0 if late else hold.amount
        since = now if late else hold.created_at
        eligible = [lot for lot in self.wallet_lots(hold.wallet) if lot.expires_at > since]
        charged = min(amount, reserved + self.available(hold.wallet), sum(lot.remaining for lot in eligible))
        self.take(eligible, charged)
        hold.status = "expired" if late else "settled"
        hold.charged, hold.shortfall = charged, amount - charged
        self.system["usage_revenue"] += amount
        self.system["credit_loss"] -= amount - charged
        return charged, amount - charged

    def release(self, key: str) -> None:
        self.holds[key].status = "released"

    def sweep(self, now: datetime) -> int:
        due = [h for h in self.holds.values() if h.status == "active" and h.expires_at <= now]
        for hold in due:
            hold.status = "expired"
        return len(due)

    def transfer(self, src: int, dst: int, amount: int, now: datetime) -> None:
        self.expire_wallet(src, now)
        if self.available(src) < amount:
            raise Refused(InsufficientCredit)
        live = [lot for lot in self.wallet_lots(src) if lot.expires_at > now]
        for origin, part in self.take(live, amount):
            self.lots.append(MLot(dst, "transfer_in", part, part, origin.expires_at, now, self._next_seq()))

    def debit(self, lot: MLot, amount: int, now: datetime) -> None:
        self.expire_wallet(lot.wallet, now)
        if lot.remaining < amount or lot.expires_at <= now or self.available(lot.wallet) < amount:
            raise Refused(InsufficientCredit)
        lot.remaining -= amount
        self.system["refunds"] += amount


# ---------------------------------------------------------------- the machine


class LedgerMachine(RuleBasedStateMachine):
    """Set `database`, `clock` and `base_config` on a subclass (see the test below)."""

    database: Any = None
    clock: Any = None
    base_config: config.Config | None = None

    def __init__(self) -> None:
        super().__init__()
        clean(self.database)
        self.clock.set(EPOCH)
        assert self.base_config is not None
        config.install(self.base_config)
        factory = Factory()
        self.accounts = [factory.account() for _ in range(WALLETS)]
        self.wallet_ids = [a.wallet.id for a in self.accounts]
        self.model = Model(self.base_config.expiry_policy)
        self.keys = 0

    def _key(self, prefix: str) -> str:
        self.keys += 1
        return f"{prefix}-{self.keys}"

    def _attempt(self, name: str, model_op: Any, service_op: Any) -> Any:
        """Run the operation on a copy of the model and on the services; both accept or both refuse."""
        trial = copy.deepcopy(self.model)
        try:
            expected = model_op(trial)
        except Refused as refusal:
            event(f"{name}: refused ({refusal.error.__name__})")
            with pytest.raises(refusal.error) as info:
                service_op()
            for field, value in refusal.extra.items():
                assert info.value.extra[field] == value
            return None
        result = service_op()
        self.model = trial
        event(f"{name}: done")
        return expected, result

    def _protected(self) -> bool:
        """Is expired credit being kept for holds made before its expiry?"""
        return any(lot.remaining > 0 and lot.expires_at <= self.now for lot in self.model.lots)

    @property
    def now(self) -> datetime:
        return self.clock.now()

    @initialize(policy=st.sampled_from(["per_lot", "rolling"]))
    def choose_policy(self, policy: str) -> None:
        assert self.base_config is not None
        config.install(dataclasses.replace(self.base_config, expiry_policy=policy))
        self.model.policy = policy

    @initialize(grants=st.lists(st.tuples(st.integers(0, WALLETS - 1), AMOUNTS, SOURCES, EXPIRY_HOURS),
                                min_size=WALLETS, max_size=3 * WALLETS))
    def fund(self, grants: list[tuple[int, int, str, int | None]]) -> None:
        """Start with some credit, so that most runs reserve, settle and transfer rather than get refused."""
        for w, amount, source, hours in grants:
            self.grant(w, amount * 4, source, hours)

    # -- rules

    @rule(w=st.integers(0, WALLETS - 1), amount=AMOUNTS, source=SOURCES, hours=EXPIRY_HOURS)
    def grant(self, w: int, amount: int, source: str, hours: int | None) -> None:
        now = self.now
        expires_at = now + (timedelta(hours=hours) if hours else timedelta(days=180))
        result = ledger.grant(self.wallet_ids[w], amount, source, expires_at=None if hours is None else expires_at)
        assert result.created and result.lot.expires_at == expires_at
        self.model.grant(w, amount, source, expires_at, now)
        event("grant")

    @rule(w=st.integers(0, WALLETS - 1), amount=AMOUNTS, ttl=HOLD_TTL_S)
    def reserve(self, w: int, amount: int, ttl: int) -> None:
        self._reserve(w, amount, ttl)

    def _reserve(self, w: int, amount: int, ttl: int) -> str | None:
        """Reserve on both sides; return the hold's key, or None when (both) refused."""
        key, now = self._key("call"), self.now
        outcome = self._attempt("reserve", lambda m: m.reserve(w, key, amount, now, ttl),
                                lambda: ledger.reserve(self.wallet_ids[w], key, amount, ttl_s=ttl))
        if outcome is None:
            return None
        hold = outcome[1]
        assert (hold.created, hold.status, hold.amount, hold.created_at) == (True, "active", amount, now)
        return key

    def _settleable(self) -> list[MHold]:
        return [h for h in self.model.holds.values() if h.charged is None and h.status in ("active", "expired")]

    def _finish(self, hold: MHold, how: str, odd: int) -> None:
        """Settle a hold (nothing, part of it, all of it, more than it, anything) or release it."""
        if how == "release":
            if hold.status == "active":  # a swept hold has nothing left to release
                view = ledger.release(hold.key)
                assert (view.created, view.status, view.charged) == (True, "released", None)
                self.model.release(hold.key)
                event("release")
            return
        amount = {"zero": 0, "part": min(odd, hold.amount), "full": hold.amount,
                  "over": hold.amount + odd, "any": odd}[how]
        late = hold.status == "expired"
        expected, view = self._attempt("settle", lambda m: m.settle(hold.key, amount, self.now),
                                       lambda: ledger.settle(hold.key, amount))
        assert (view.charged, view.shortfall) == expected
        assert view.status == ("expired" if late else "settled")
        event(f"settle {how}{' late' if late else ''}{' with shortfall' if view.shortfall else ''}")

    @precondition(lambda self: self._settleable())
    @rule(pick=st.integers(0, 10**6), how=FINISH, odd=ODD_AMOUNTS)
    def finish_call(self, pick: int, how: str, odd: int) -> None:
        holds = self._settleable()
        self._finish(holds[pick % len(holds)], how, odd)

    @rule(w=st.integers(0, WALLETS - 1), amount=AMOUNTS, ttl=HOLD_TTL_S, hours=st.sampled_from([0, 1, 6, 24]),
          job=st.booleans(), how=FINISH, odd=ODD_AMOUNTS)
    def call(self, w: int, amount: int, ttl: int, hours: int, job: bool, how: str, odd: int) -> None:
        """A whole call in one step: reserve, let time pass (perhaps across an expiry, with or without the
        expiry job), finish."""
        key = self._reserve(w, amount, ttl)
        if key is None:
            return
        if hours:
            self.time_passes(hours, "expire" if job else "none")
        self._finish(self.model.holds[key], how, odd)

    @rule(hours=ADVANCE_HOURS, jobs=st.sampled_from(["none", "expire", "sweep+expire"]))
    def time_passes(self, hours: int, jobs: str) -> None:
        """Let time pass; then perhaps run the hold sweep and the expiry job (or leave expiry to be lazy)."""
        self.clock.advance(hours=hours)
        if jobs == "sweep+expire":
            swept = ledger.sweep_holds()
            assert swept == self.model.sweep(self.now)
            event(f"sweep: {'some' if swept else 'none'}")
        if jobs != "none":
            result = ledger.expire_lots()
            assert result.amount == self.model.expire_all(self.now)
            event(f"expire job: {'broke some' if result.amount else 'nothing due'}")
        if self._protected():
            event("expired credit kept for holds made before the expiry, or not broken yet")

    @rule(src=st.integers(0, WALLETS - 1), dst=st.integers(0, WALLETS - 1), amount=AMOUNTS, by_email=st.booleans())
    def transfer(self, src: int, dst: int, amount: int, by_email: bool) -> None:
        if src == dst:
            dst = (dst + 1) % WALLETS
        to = self.accounts[dst].email if by_email else self.accounts[dst].wallet.account_number
        key, now = self._key("transfer"), self.now
        outcome = self._attempt("transfer", lambda m: m.transfer(src, dst, amount, now),
                                lambda: ledger.transfer(self.wallet_ids[src], to, amount, key=key))
        if outcome is not None:
            view = outcome[1]
            assert (view.created, view.amount, view.to_wallet_id) == (True, amount, self.wallet_ids[dst])

    @precondition(lambda self: self.model.lots)
    @rule(pick=st.integers(0, 10**6), how=st.sampled_from(["all", "part", "any"]), odd=ODD_AMOUNTS)
    def refund_debit(self, pick: int, how: str, odd: int) -> None:
        lots = self.model.lots
        index = pick % len(lots)
        lot = lots[index]
        assert lot.id is not None
        amount = {"all": lot.remaining, "part": min(odd, lot.remaining), "any": odd}[how] or odd
        key = self._key("refund")
        outcome = self._attempt("refund debit", lambda m: m.debit(m.lots[index], amount, self.now),
                                lambda: ledger.debit_lot_for_refund(lot.id, amount, key=key))
        if outcome is not None:
            assert isinstance(outcome[1], int)

    # -- the comparison

    @invariant()
    def services_agree_with_the_model(self) -> None:
        # One connection reads the state (a dozen service calls per step would triple the run time).
        with self.database.engine.connect() as conn:
            wallets = {row.id: row for row in conn.execute(
                sa.select(ledger.W.c.id, ledger.W.c.balance, ledger.W.c.held, ledger.W.c.next_expiry_at))}
            lots = conn.execute(sa.select(ledger.L).order_by(ledger.L.c.id)).all()
            holds = {row.key: (row.status, row.charged, row.shortfall) for row in conn.execute(sa.select(ledger.H))}
            system = dict(conn.execute(
                sa.select(ledger.P.c.system_account, sa.func.sum(ledger.P.c.amount))
                .where(ledger.P.c.system_account.is_not(None)).group_by(ledger.P.c.system_account)).all())
        model = self.model
        for w, wallet_id in enumerate(self.wallet_ids):
            row = wallets[wallet_id]
            assert (row.balance, row.held) == (model.balance(w), model.held(w)), f"wallet {w}"
            assert row.balance - row.held == model.available(w) >= 0
            actual = [lot for lot in lots if lot.wallet_id == wallet_id]
            expected = model.wallet_lots(w)
            assert [(v.source, v.granted, v.remaining, v.expires_at, v.created_at) for v in actual] == [
                lot.row() for lot in expected], f"lots of wallet {w}"
            for lot, v in zip(expected, actual, strict=True):
                lot.id = v.id
            live = [lot.expires_at for lot in expected if lot.remaining > 0]
            if live:  # may be early (a harmless extra visit by the job), never late
                assert row.next_expiry_at is not None and row.next_expiry_at <= min(live)
        for name in SYSTEM_ACCOUNTS:
            assert system.get(name, 0) == model.system[name], name
        assert holds == {h.key: (h.status, h.charged, h.shortfall) for h in model.holds.values()}
        report = run_audit()
        assert report.ok, report.text()

    @invariant()
    def read_services_agree(self) -> None:
        """The public reads (balance, lots in draw order) say the same, for one wallet per step."""
        w = self.keys % WALLETS
        view = ledger.balance(self.wallet_ids[w])
        assert (view.balance, view.held, view.available) == (
            self.model.balance(w), self.model.held(w), self.model.available(w))
        open_lots = self.model.in_draw_order([lot for lot in self.model.wallet_lots(w) if lot.remaining > 0])
        assert [(v.source, v.granted, v.remaining, v.expires_at, v.created_at)
                for v in ledger.lots(self.wallet_ids[w])] == [lot.row() for lot in open_lots]


def test_ledger_agrees_with_the_model(app, database, clock):
    machine = type("Machine", (LedgerMachine,), {
        "database": database, "clock": clock, "base_config": config.current()})
    original = config.current()
    try:
        run_state_machine_as_test(machine, settings=SETTINGS)
    finally:
        config.install(original)
