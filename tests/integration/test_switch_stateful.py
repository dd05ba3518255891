"""Randomised switch traffic: a Hypothesis state machine sends authorize (new calls and retries), update,
complete (with every kind of duration, retries and unknown calls), CDR batches (with duplicates), lets time
pass (with the expiry and hold-sweep jobs), and makes customer transfers and staff refunds, all through the
real HTTP stack (the Flask test client, so through the WSGI middleware and the switch lane).

On PostgreSQL two identical worlds live in one database, each with its own wallets, caller numbers and switch
key: "fast" (the fast paths of credits/calls/fastpath.py and credits/ledger/fastpath.py and the switch lane on,
as in production) and "general" (all three off: Flask and credits/calls/service.py alone). Every step is sent
to both, in turn, at the same frozen time; then:
- both got the same answers: status and JSON body, the request id left out, world-specific names (call ids,
  account and caller numbers, emails, user, purchase and refund ids) replaced by labels;
- both hold the same rows: wallets, lots, holds, journal transactions, postings, calls, transfers, refunds
  and the switch key's last use, row ids replaced by their rank within the world;
- both agree with a model: the ledger model of test_ledger_stateful (lots, draw order, holds, expiry keeping
  what holds made before it need, transfers, refund debits) with the switch on top (DESIGN §5: rating, a hold
  for the whole allowed duration, shared credit of max_concurrent_calls, retries, update, complete, CDRs, the
  sweep), which predicts every answer of the switch, transfer and refund, and every balance, lot, hold, call
  and system account.
After every example `flask ledger audit` must be clean. The jobs run once for both worlds (their counts are
twice the model's).

SQLite has no fast path: there one world (the lane on) is checked against the model, that is the general path.
The test also counts that the lane (both backends) and the fast path (PostgreSQL) served most of the fast
world's new calls and calls in progress, so that the equivalence is not vacuous; run with -s to see the counts
and what the runs did.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from credits import clock as clock_mod
from credits import config, jobs, money
from credits.accounts import apikeys
from credits.accounts import service as accounts
from credits.accounts.models import ApiKey
from credits.calls import fastpath as calls_fastpath
from credits.calls import service as calls
from credits.calls.models import Call
from credits.errors import (
    AccountNotActive,
    Conflict,
    CreditsError,
    IdempotencyConflict,
    InsufficientCredit,
    LimitExceeded,
    NotFound,
)
from credits.ledger import fastpath as ledger_fastpath
from credits.ledger import service as ledger
from credits.ledger.models import SYSTEM_ACCOUNTS, Transfer
from credits.payments import provider
from credits.payments import service as payments
from credits.payments.fake_gateway import FakeGateway
from credits.payments.models import Refund
from credits.rating import engine
from credits.rating import service as rating
from credits.rating.engine import Rate
from credits.web import switch_lane
from credits.web.switch_lane import SwitchLane
from tests.conftest import EPOCH, Backend, clean
from tests.integration.payments_fixtures import WEBHOOK_SECRET, bearer, fake_card
from tests.integration.switch_fixtures import (
    DEFAULT_RATES,
    FREE,
    FREE_CALLEE,
    NO_RATE_CALLEE,
    SF,
    SF_CALLEE,
    SG,
    SG_CALLEE,
    UK,
    UK_CALLEE,
    US,
    US_CALLEE,
    Switch,
)
from tests.integration.test_ledger_stateful import Model as LedgerModel
from tests.integration.test_ledger_stateful import Refused

pytestmark = pytest.mark.slow

#: The worlds of each backend: SQLite has no fast path, so one world (the lane on) against the model there.
WORLDS = {"postgresql": ("fast", "general"), "sqlite": ("fast",)}
SETTINGS = {
    "postgresql": settings(max_examples=15, stateful_step_count=30, deadline=None, derandomize=True, database=None,
                           suppress_health_check=[HealthCheck.too_slow]),
    "sqlite": settings(max_examples=20, stateful_step_count=30, deadline=None, derandomize=True, database=None,
                       suppress_health_check=[HealthCheck.too_slow]),
}

PASSWORD = "correct horse battery"
#: Expensive (1.50/min and a connect fee): a few dollars buy minutes, so calls are cut short, refused, run
#: over their hold and are lengthened by update.
SAT = Rate("8816", "Satellite", 1_500_000, 100_000, 60, 60)
SAT_CALLEE = "+881612345678"
RATES = [*DEFAULT_RATES, SAT]
CALLEES: dict[str, tuple[str, Rate | None]] = {
    "sg": (SG_CALLEE, SG), "us": (US_CALLEE, US), "sf": (SF_CALLEE, SF), "uk": (UK_CALLEE, UK),
    "sat": (SAT_CALLEE, SAT), "free": (FREE_CALLEE, FREE), "none": (NO_RATE_CALLEE, None),
}

# The wallets of a world: 0 has two caller numbers and a purchase, 1 a purchase, 2 lets two calls share its
# credit (max_concurrent_calls, which the fast path leaves to the general path), 3 is frozen. Index 4 is a
# caller nobody registered.
WALLETS = 4
UNKNOWN = 4
NUMBERS = (2, 1, 1, 1)
LIMITS = (None, None, 2, None)
STATUSES = ("active", "active", "active", "frozen")
PURCHASES = {0: "5.00", 1: "2.00"}
SENDERS = 3  # wallets 0-2 send transfers (3 is frozen)
UNKNOWN_NUMBER = "+6589999999"
UNKNOWN_ACCOUNT = "9999999999"

PICK = st.integers(0, 10**6)
WHO = st.sampled_from([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, UNKNOWN])
CALLEE = st.sampled_from(["sg", "sg", "us", "sf", "uk", "uk", "sat", "sat", "sat", "free", "none"])
DISPOSITION = st.sampled_from(["answered"] * 6 + ["no_answer", "busy", "failed", "cancelled"])
#: How a complete's duration is chosen: `secs`, none, the allowed maximum, beyond it (charged past the hold), a
#: day; or, for a call completed already, its duration again (a retry) or another one (409).
FINISH = st.sampled_from(["secs", "secs", "secs", "zero", "at_max", "over", "huge", "same", "other"])
SECONDS = st.integers(1, 900)
GRANT_AMOUNT = st.integers(1, 40).map(lambda k: k * 50_000)  # 0.05 .. 2.00
GRANT_SOURCE = st.sampled_from(["promo", "credit_note"])
EXPIRY_HOURS = st.sampled_from([1, 2, 3, 6, 24, 72, None])  # None: the default validity


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Small purchases and transfers, so that credit runs out within a run.
    return {"purchase_custom_min": "1.00", "transfer_min": "0.01"}


def fmt(amount: int) -> str:
    return money.format_micro(amount)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def decimal(amount: int) -> str:
    """An amount of whole cents as the API's decimal string ("1.25")."""
    cents = amount // 10_000
    assert cents * 10_000 == amount
    return f"{cents // 100}.{cents % 100:02d}"


def rate_body(rate: Rate) -> dict[str, Any]:
    return {"prefix": rate.prefix, "destination": rate.destination, "rate_per_minute": fmt(rate.rate_per_minute),
            "connect_fee": fmt(rate.connect_fee), "first_increment_s": rate.first_increment_s,
            "next_increment_s": rate.next_increment_s}


# ---------------------------------------------------------------- the model

#: What the model expects of an answer: status, body, and whether that is the whole body (else: these fields).
Expect = tuple[int, dict[str, Any], bool]
Answer = tuple[int, Any]


def ok(body: dict[str, Any], status: int = 200, whole: bool = True) -> Expect:
    return status, body, whole


def error(exc: type[CreditsError]) -> Expect:
    return exc.status, {"code": exc.code}, False


@dataclasses.dataclass
class MCall:
    wallet: int
    source: str  # switch | cdr
    status: str  # authorized | completed | abandoned
    rate: Rate
    max_d: int = 0
    reserved: int = 0
    hold: str | None = None  # the hold's key
    duration: int | None = None
    disposition: str | None = None
    billed: int | None = None
    cost: int | None = None
    charged: int | None = None
    flagged: bool = False
    flag_reason: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.source, self.status, self.max_d, self.reserved, self.duration, self.disposition, self.billed,
                self.cost, self.charged, self.flagged, self.flag_reason)


@dataclasses.dataclass
class MTransfer:
    src: int
    dst: int
    amount: int
    created_at: datetime


@dataclasses.dataclass
class MPurchase:
    amount: int
    lot: int  # index in Model.lots
    refunded: int = 0


@dataclasses.dataclass(frozen=True)
class MCdr:
    call_id: str
    wallet: int | None
    callee: str
    duration: int
    disposition: str
    answered: datetime


class SwitchModel(LedgerModel):
    """The switch on top of the ledger model. Each operation runs on a copy (`SwitchMachine.apply`) and says
    whether its changes are kept: a refusal, a replay or a service that raised writes nothing."""

    def __init__(self, cfg: config.Config) -> None:
        super().__init__(cfg.expiry_policy)
        self.cap, self.grace = cfg.max_call_duration_s, cfg.hold_grace_s
        self.validity = timedelta(days=cfg.credit_validity_days)
        self.transfer_max, self.transfer_daily = money.parse(cfg.transfer_max), money.parse(cfg.transfer_daily_limit)
        self.calls: dict[str, MCall] = {}
        self.transfers: list[MTransfer] = []
        self.transfer_keys: dict[tuple[int, str], int] = {}
        self.purchases: dict[int, MPurchase] = {}
        self.refunds = 0

    def active_calls(self, w: int) -> int:
        return sum(1 for c in self.calls.values() if c.wallet == w and c.status == "authorized"
                   and c.hold is not None and self.holds[c.hold].status == "active")

    def purchase(self, w: int, amount: int, now: datetime) -> None:
        self.grant(w, amount, "purchase", now + self.validity, now)
        self.purchases[w] = MPurchase(amount, len(self.lots) - 1)

    # -- authorize

    def _stored(self, call_id: str, call: MCall) -> Expect:
        """The first answer again; balance and available as the wallet is in the transaction now."""
        w = call.wallet
        return ok({"call_id": call_id, "authorized": True, "max_duration_s": call.max_d,
                   "reserved": fmt(call.reserved), "currency": "USD", "rate": rate_body(call.rate),
                   "balance": fmt(self.balance(w)), "available": fmt(self.balance(w) - self.held(w))})

    def _refuse(self, call_id: str, w: int, reason: str) -> Expect:
        call = self.calls.get(call_id)
        if call is None:
            return ok({"call_id": call_id, "authorized": False, "max_duration_s": 0, "reason": reason})
        if call.source != "switch" or call.wallet != w:
            return error(Conflict)
        return self._stored(call_id, call)

    def authorize(self, now: datetime, call_id: str, w: int | None, callee: str) -> tuple[Expect, bool]:
        if w is None:
            return ok({"call_id": call_id, "authorized": False, "max_duration_s": 0, "reason": "unknown_caller"}), False
        rate = CALLEES[callee][1]
        if STATUSES[w] == "frozen":
            return self._refuse(call_id, w, "account_frozen"), False
        if rate is None:
            return self._refuse(call_id, w, "no_rate"), False
        self.expire_wallet(w, now)  # lazily; kept only if the call is authorised
        available = share = self.available(w)
        limit = LIMITS[w]
        if limit:
            in_progress = self.active_calls(w)
            if in_progress >= limit:
                return self._refuse(call_id, w, "too_many_calls"), False
            share = available // (limit - in_progress)
        max_d = engine.max_duration(rate, share, self.cap)
        if max_d == 0:
            return self._refuse(call_id, w, "insufficient_credit"), False
        amount = engine.reserve_amount(rate, max_d)
        if amount == 0:  # a free destination: a token hold tracks the call
            amount = 1 if available >= 1 else 0
        if amount == 0:
            return self._refuse(call_id, w, "insufficient_credit"), False
        known = self.calls.get(call_id)
        if known is not None:  # a retry: the hold exists (or a CDR has the call_id)
            if known.source != "switch" or known.wallet != w:
                return error(Conflict), False
            return self._stored(call_id, known), False
        balance = self.balance(w)
        self.reserve(w, f"call:{call_id}", amount, now, max_d + self.grace)
        self.calls[call_id] = MCall(w, "switch", "authorized", rate, max_d, amount, f"call:{call_id}")
        return ok({"call_id": call_id, "authorized": True, "max_duration_s": max_d, "reserved": fmt(amount),
                   "currency": "USD", "rate": rate_body(rate), "balance": fmt(balance),
                   "available": fmt(available - amount)}), True

    # -- update and complete

    def update(self, now: datetime, call_id: str, elapsed: int) -> tuple[Expect, bool]:
        call = self.calls.get(call_id)
        if call is None:
            return error(NotFound), False
        hold = self.holds[call.hold] if call.hold else None
        if call.status != "authorized" or hold is None or hold.status != "active":
            return ok({"authorized": False, "max_duration_s": call.max_d}), False
        w = call.wallet
        self.expire_wallet(w, now)  # kept only if the hold grows
        available = extra = self.available(w)
        limit = LIMITS[w]
        if limit:
            others = self.active_calls(w) - 1
            extra = available // max(1, limit - others)
        new_max = engine.max_duration(call.rate, hold.amount + extra, self.cap)
        if new_max <= call.max_d:
            return ok({"authorized": call.max_d > elapsed, "max_duration_s": call.max_d}), False
        hold.amount = max(hold.amount, engine.reserve_amount(call.rate, new_max))
        hold.expires_at = now - timedelta(seconds=elapsed) + timedelta(seconds=new_max + self.grace)
        call.max_d, call.reserved = new_max, hold.amount
        return ok({"authorized": new_max > elapsed, "max_duration_s": new_max}), True

    def complete(self, now: datetime, call_id: str, duration: int, disposition: str) -> tuple[Expect, bool]:
        call = self.calls.get(call_id)
        if call is None:
            return error(NotFound), False
        w = call.wallet
        if call.status == "completed":
            if (call.duration, call.disposition) != (duration, disposition):
                return error(Conflict), False
            return ok({"call_id": call_id, "charged": fmt(call.charged or 0), "billed_duration_s": call.billed or 0,
                       "balance": fmt(self.balance(w))}), False
        assert call.hold is not None
        rate = call.rate
        chargeable = disposition == "answered" and duration > 0
        billed = engine.billed_seconds(duration, rate.first_increment_s, rate.next_increment_s) if chargeable else 0
        cost = engine.cost(rate, duration) if chargeable else 0
        hold = self.holds[call.hold]
        late = call.status == "abandoned" or hold.status == "expired"
        self.expire_wallet(w, now)
        charged = shortfall = 0
        if cost == 0:
            if hold.status == "active":
                self.release(hold.key)
        else:
            charged, shortfall = self.settle(hold.key, cost, now)
        reason = "credit_shortfall" if shortfall else ("completed_after_abandon" if late and cost else None)
        call.flagged, call.flag_reason = bool(reason) or call.flagged, reason or call.flag_reason
        call.status, call.duration, call.disposition = "completed", duration, disposition
        call.billed, call.cost, call.charged = billed, cost, charged
        return ok({"call_id": call_id, "charged": fmt(charged), "billed_duration_s": billed,
                   "balance": fmt(self.balance(w))}), True

    # -- CDRs

    def cdrs(self, now: datetime, items: list[MCdr]) -> tuple[Expect, bool]:
        results: list[dict[str, Any] | None] = []
        # call_id -> (index, wallet, rate, item, cost, billed)
        rated: dict[str, tuple[int, int, Rate, MCdr, int, int]] = {}
        for index, item in enumerate(items):
            rate = CALLEES[item.callee][1]
            if item.wallet is None or rate is None:
                error_text = "unknown_caller" if item.wallet is None else "no_rate"
                results.append({"call_id": item.call_id, "status": "rejected", "charged": fmt(0), "error": error_text})
                continue
            if item.call_id in rated:
                results.append({"call_id": item.call_id, "status": "duplicate", "charged": fmt(0), "error": None})
                continue
            chargeable = item.disposition == "answered" and item.duration > 0
            cost = engine.cost(rate, item.duration) if chargeable else 0
            billed = engine.billed_seconds(item.duration, rate.first_increment_s, rate.next_increment_s) \
                if chargeable else 0
            rated[item.call_id] = (index, item.wallet, rate, item, cost, billed)
            results.append(None)
        inserted = [call_id for call_id in rated if call_id not in self.calls]
        to_charge = [call_id for call_id in inserted if rated[call_id][4] > 0]
        for w in sorted({rated[call_id][1] for call_id in to_charge}):
            self.expire_wallet(w, now)
        charged_of: dict[str, tuple[int, int]] = {}
        for call_id in to_charge:
            _, w, _, item, cost, _ = rated[call_id]
            eligible = [lot for lot in self.wallet_lots(w) if lot.expires_at > item.answered and lot.remaining > 0]
            coverable = max(0, min(cost, self.available(w), sum(lot.remaining for lot in eligible)))
            self.take(eligible, coverable)
            self.system["usage_revenue"] += cost
            self.system["credit_loss"] -= cost - coverable
            charged_of[call_id] = (coverable, cost - coverable)
        for call_id in inserted:
            index, w, rate, item, cost, billed = rated[call_id]
            charged, shortfall = charged_of.get(call_id, (0, 0))
            self.calls[call_id] = MCall(w, "cdr", "completed", rate, duration=item.duration,
                                        disposition=item.disposition, billed=billed, cost=cost, charged=charged,
                                        flagged=bool(shortfall), flag_reason="credit_shortfall" if shortfall else None)
            results[index] = {"call_id": call_id, "status": "charged", "charged": fmt(charged), "error": None}
        for call_id, (index, *_rest) in rated.items():
            if results[index] is None:
                results[index] = {"call_id": call_id, "status": "duplicate", "charged": fmt(0), "error": None}
        return ok({"results": results}), True

    # -- jobs

    def expire_job(self, now: datetime) -> tuple[tuple[int, int], bool]:
        before = [lot.remaining for lot in self.lots]
        broken = self.expire_all(now)
        lots = sum(1 for lot, was in zip(self.lots, before, strict=True) if lot.remaining < was)
        return (lots, broken), True

    def sweep_job(self, now: datetime) -> tuple[tuple[int, int], bool]:
        expired = self.sweep(now)
        abandoned = 0
        for call in self.calls.values():
            if call.status == "authorized" and call.hold and self.holds[call.hold].status == "expired":
                call.status = "abandoned"
                abandoned += 1
        return (expired, abandoned), True

    # -- customer transfers and staff refunds

    def _transfer_body(self, index: int) -> dict[str, Any]:
        t = self.transfers[index]
        return {"id": f"<t{index}>", "from_account": f"<acct{t.src}>", "to_account": f"<acct{t.dst}>",
                "amount": fmt(t.amount), "currency": "USD", "balance": fmt(self.balance(t.src)),
                "available": fmt(self.available(t.src)), "created_at": t.created_at.isoformat()}

    def send_transfer(self, now: datetime, src: int, dst: int, amount: int, key: str | None) -> tuple[Expect, bool]:
        if key is not None and (src, key) in self.transfer_keys:
            index = self.transfer_keys[(src, key)]
            t = self.transfers[index]
            if (t.dst, t.amount) != (dst, amount):
                return error(IdempotencyConflict), False
            return ok(self._transfer_body(index), 201), False
        if amount > self.transfer_max:
            return error(LimitExceeded), False
        if STATUSES[dst] != "active":
            return error(AccountNotActive), False
        sent = sum(t.amount for t in self.transfers if t.src == src and t.created_at > now - timedelta(days=1))
        if sent + amount > self.transfer_daily:
            return error(LimitExceeded), False
        try:
            self.transfer(src, dst, amount, now)
        except Refused as refusal:
            assert refusal.error is InsufficientCredit
            return error(InsufficientCredit), False
        self.transfers.append(MTransfer(src, dst, amount, now))
        if key is not None:
            self.transfer_keys[(src, key)] = len(self.transfers) - 1
        return ok(self._transfer_body(len(self.transfers) - 1), 201), True

    def refund(self, now: datetime, w: int, amount: int) -> tuple[Expect, bool]:
        purchase = self.purchases[w]
        if amount > purchase.amount - purchase.refunded:
            return error(LimitExceeded), False
        lot = self.lots[purchase.lot]
        if amount > (lot.remaining if lot.expires_at > now else 0):
            return error(InsufficientCredit), False
        try:
            self.debit(lot, amount, now)
        except Refused as refusal:
            assert refusal.error is InsufficientCredit
            return error(InsufficientCredit), False
        purchase.refunded += amount
        self.refunds += 1
        return ok({"id": f"<r{self.refunds - 1}>", "purchase_id": f"<p{w}>", "amount": fmt(amount),
                   "currency": "USD", "status": "succeeded", "failure_reason": None}, 201, whole=False), True


# ---------------------------------------------------------------- a world: its accounts, requests and rows


@dataclasses.dataclass
class Party:
    user_id: int
    wallet_id: int
    account: str
    email: str
    numbers: list[str]
    headers: dict[str, str]
    purchase_id: int | None = None
    payment_intent: str | None = None


class World:
    """One set of accounts with its own switch key; `fast` says whether the fast path and the lane are on."""

    def __init__(self, tag: str, fast: bool, k: int, client: Any, gateway: FakeGateway) -> None:
        self.tag, self.fast, self.client = tag, fast, client
        key = apikeys.create_key(f"switch-{tag}", "switch")
        self.key_id = key.view.id
        self.switch = Switch(client, key.secret)
        self.parties: list[Party] = []
        for w in range(WALLETS):
            numbers = [f"+6581{k}{w}{i}000" for i in range(NUMBERS[w])]
            account = accounts.create_account(f"{tag}{w}@example.com", PASSWORD, phone=numbers[0])
            for number in numbers[1:]:
                calls.register_caller_number(account.wallet.id, number)
            if LIMITS[w]:
                calls.set_max_concurrent_calls(account.wallet.id, LIMITS[w])
            party = Party(account.user_id, account.wallet.id, account.wallet.account_number, account.email, numbers,
                          bearer(account.user_id))
            if w in PURCHASES:
                view = payments.purchase(account.user_id, PURCHASES[w], fake_card(gateway, account.user_id))
                assert view.status == "succeeded", view
                party.purchase_id, party.payment_intent = view.id, view.payment_intent_id
            if STATUSES[w] != "active":
                accounts.set_status(account.user_id, STATUSES[w])
            self.parties.append(party)
        self.label = {p.wallet_id: f"W{w}" for w, p in enumerate(self.parties)}
        self.ids: dict[str, dict[int, str]] = {"t": {}, "r": {}}
        self.tokens: dict[str, str] = {}
        for w, p in enumerate(self.parties):
            self.tokens[p.account] = f"<acct{w}>"
            self.tokens[p.email] = f"<email{w}>"
            self.tokens[f"user:{p.user_id}"] = f"user:<u{w}>"
            self.tokens[f"transfer:{p.user_id}:"] = f"transfer:<u{w}>:"
            for i, number in enumerate(p.numbers):
                self.tokens[number] = f"<num{w}.{i}>"
            if p.purchase_id is not None:
                self.tokens[f"purchase {p.purchase_id}"] = f"purchase <p{w}>"
                self.tokens[f"purchase:{p.purchase_id}"] = f"purchase:<p{w}>"
            if p.payment_intent is not None:
                self.tokens[p.payment_intent] = f"<pi{w}>"
        self._compile()

    def _compile(self) -> None:
        alternatives = "|".join(re.escape(t) for t in sorted(self.tokens, key=len, reverse=True))
        self._pattern = re.compile(f"(?<![0-9])(?:{alternatives})(?![0-9])")

    # -- normalising

    def norm(self, value: Any) -> Any:
        """World-specific strings (call ids, account and caller numbers, emails, user ids) as labels."""
        if isinstance(value, str):
            return self._pattern.sub(lambda m: self.tokens[m.group(0)], value.replace(f"@{self.tag}", "@w"))
        if isinstance(value, dict):
            return {k: self.norm(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.norm(v) for v in value)
        return value

    def rank(self, kind: str, row_id: int) -> str:
        """A transfer's or refund's id as the label of its rank (first seen first) in this world."""
        seen = self.ids[kind]
        if row_id not in seen:
            seen[row_id] = f"<{kind}{len(seen)}>"
            if kind == "r":
                self.tokens[f"refund:{row_id}:"] = f"refund:{seen[row_id]}:"
                self._compile()
        return seen[row_id]

    def answer(self, resp: Any) -> Answer:
        body = resp.get_json()
        if isinstance(body, dict):
            body.pop("request_id", None)
        return resp.status_code, self.norm(body)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """The fast path, the ledger's fast path and the lane on (fast) or off (general) while this world is
        served."""
        calls_fastpath.ENABLED = ledger_fastpath.ENABLED = switch_lane.ENABLED = self.fast
        try:
            yield
        finally:
            calls_fastpath.ENABLED = ledger_fastpath.ENABLED = switch_lane.ENABLED = True

    # -- requests

    def call_id(self, call_id: str) -> str:
        return f"{call_id}@{self.tag}"

    def who(self, w: int, number: int) -> str:
        return UNKNOWN_NUMBER if w == UNKNOWN else self.parties[w].numbers[number % NUMBERS[w]]

    def authorize(self, call_id: str, w: int, number: int, by_account: bool, callee: str) -> Answer:
        body: dict[str, Any] = {"call_id": self.call_id(call_id), "callee": CALLEES[callee][0]}
        if by_account:
            body["account"] = UNKNOWN_ACCOUNT if w == UNKNOWN else self.parties[w].account
        else:
            body["caller"] = self.who(w, number)
        return self.answer(self.switch.post("/calls/authorize", body))

    def update(self, call_id: str, elapsed: int) -> Answer:
        return self.answer(self.switch.update(self.call_id(call_id), elapsed))

    def complete(self, call_id: str, duration: int, disposition: str, times: bool) -> Answer:
        extra: dict[str, Any] = {}
        if times:
            now = clock_mod.now()
            extra = {"answered_at": iso(now - timedelta(seconds=duration)), "ended_at": iso(now), "end_reason": "bye"}
        return self.answer(self.switch.complete(self.call_id(call_id), duration, disposition, **extra))

    def cdrs(self, items: list[MCdr], numbers: list[int]) -> Answer:
        return self.answer(self.switch.cdrs([
            {"call_id": self.call_id(item.call_id), "caller": self.who(UNKNOWN if item.wallet is None else item.wallet,
                                                                       number),
             "callee": CALLEES[item.callee][0], "duration_s": item.duration, "answered_at": iso(item.answered),
             "disposition": item.disposition}
            for item, number in zip(items, numbers, strict=True)]))

    def transfer(self, src: int, dst: int, amount: int, by_email: bool, key: str | None) -> Answer:
        to = self.parties[dst].email if by_email else self.parties[dst].account
        headers = dict(self.parties[src].headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        status, body = self.answer(self.client.post("/api/v1/me/transfers", headers=headers, json={
            "to": to, "amount": decimal(amount), "password": PASSWORD}))
        if status == 201:
            body["id"] = self.rank("t", body["id"])
        return status, body

    def refund(self, w: int, amount: int, staff: dict[str, str]) -> Answer:
        status, body = self.answer(self.client.post("/api/v1/staff/refunds", headers=staff, json={
            "purchase_id": self.parties[w].purchase_id, "amount": decimal(amount),
            "reason": "customer asked"}))
        if status == 201:
            body["id"] = self.rank("r", body["id"])
            body["purchase_id"] = f"<p{w}>"
        return status, body

    # -- rows

    def rows(self, tables: dict[str, list[Any]]) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the world's money (from `read_tables`): ids replaced by their rank in the world, names by
        labels."""
        mine = self.label
        purchases = {p.purchase_id: f"<p{w}>" for w, p in enumerate(self.parties) if p.purchase_id is not None}

        def ranks(ids: Any) -> dict[int, int]:
            return {row_id: n for n, row_id in enumerate(sorted(set(ids)))}

        lots = [r for r in tables["lots"] if r.wallet_id in mine]
        holds = [h for h in tables["holds"] if h.wallet_id in mine]
        refunds = [r for r in tables["refunds"] if r.purchase_id in purchases]
        # The world's journal transactions: those with a leg on its wallets, and those its holds, CDRs and
        # refunds name (a charge that nothing could cover has no wallet leg).
        tx = ranks({p.tx_id for p in tables["postings"] if p.wallet_id in mine}
                   | {h.tx_id for h in holds if h.tx_id is not None}
                   | {r.debit_tx_id for r in refunds if r.debit_tx_id} | {r.restore_tx_id for r in refunds
                                                                          if r.restore_tx_id}
                   | {j.id for j in tables["journal_transactions"]
                      if (j.idempotency_key or "").startswith("cdr:") and j.idempotency_key.endswith(f"@{self.tag}")})
        lot = ranks(r.id for r in lots)
        hold = ranks(h.id for h in holds)
        postings = [p for p in tables["postings"] if p.tx_id in tx]
        # A transaction shared with the other world (the expiry job's set-based batch): its legs on the other
        # world's wallets, and its system legs (their total covers both worlds), are left out.
        shared = {p.tx_id for p in postings if p.wallet_id is not None and p.wallet_id not in mine}
        return self.norm({
            "wallets": [(mine[r.id], r.balance, r.held, r.next_expiry_at, r.max_concurrent_calls, r.currency,
                         r.rate_plan_id) for r in tables["wallets"] if r.id in mine],
            "lots": [(mine[r.wallet_id], r.source, r.granted, r.remaining, r.expires_at, r.created_at,
                      tx.get(r.grant_tx_id), lot.get(r.origin_lot_id), r.reference) for r in lots],
            "holds": [(mine[h.wallet_id], h.key, h.amount, h.status, h.created_at, h.expires_at, h.finished_at,
                       h.charged, h.shortfall, tx.get(h.tx_id)) for h in holds],
            "journal_transactions": [(tx[j.id], j.kind, j.created_at, j.idempotency_key, j.memo, j.actor)
                                     for j in tables["journal_transactions"] if j.id in tx],
            "postings": sorted(((tx[p.tx_id], mine.get(p.wallet_id), lot.get(p.lot_id), p.system_account, p.amount)
                                for p in postings
                                if p.wallet_id in mine or (p.wallet_id is None and p.tx_id not in shared)), key=repr),
            "calls": [(c.call_id, mine[c.wallet_id], hold.get(c.hold_id), c.source, c.caller, c.callee, c.status,
                       c.authorized_at, c.max_duration_s, c.reserved, c.rate_prefix, c.rate_destination,
                       c.rate_per_minute, c.connect_fee, c.first_increment_s, c.next_increment_s, c.answered_at,
                       c.ended_at, c.completed_at, c.duration_s, c.billed_s, c.cost, c.charged, c.disposition,
                       c.end_reason, c.flagged, c.flag_reason) for c in tables["calls"] if c.wallet_id in mine],
            "transfers": [(tx[t.tx_id], mine[t.from_wallet_id], mine[t.to_wallet_id], t.amount, t.created_at,
                           t.idempotency_key) for t in tables["transfers"] if t.from_wallet_id in mine],
            "refunds": [(purchases[r.purchase_id], r.amount, r.amount_minor, r.currency, r.status, r.reason, r.ticket,
                         r.requested_by, r.approved_by, tx.get(r.debit_tx_id), tx.get(r.restore_tx_id),
                         r.failure_reason, r.created_at, r.decided_at, r.finished_at) for r in refunds],
            "api_key": [(k.last_used_at, k.revoked_at) for k in tables["api_keys"] if k.id == self.key_id],
        })


TABLES: dict[str, sa.Table] = {
    "wallets": ledger.W, "lots": ledger.L, "holds": ledger.H, "journal_transactions": ledger.J,
    "postings": ledger.P, "calls": Call.__table__, "transfers": Transfer.__table__,  # type: ignore[dict-item]
    "refunds": Refund.__table__, "api_keys": ApiKey.__table__,  # type: ignore[dict-item]
}


def read_tables(conn: Any) -> dict[str, list[Any]]:
    """The tables the worlds are compared on, whole, in id order (a few dozen rows each: one query apiece)."""
    return {name: conn.execute(sa.select(table).order_by(table.c.id)).all() for name, table in TABLES.items()}


# ---------------------------------------------------------------- the machine


def empty(database: Any) -> None:
    """Empty every table, as conftest's `clean` does; on PostgreSQL with DELETE rather than TRUNCATE, which
    costs ten times as much on tables this small (ids then go on from where they were: rows are compared by
    rank, never by id)."""
    if database.dialect != "postgresql":
        clean(database)
        return
    from credits.models import metadata

    with database.engine.connect() as conn:
        conn.execute(sa.text("SET session_replication_role = replica"))  # no triggers: postings are append-only
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        conn.execute(sa.text("SET session_replication_role = DEFAULT"))
        conn.commit()


def check(expected: Expect, actual: Answer, what: str) -> None:
    status, body, whole = expected
    assert actual[0] == status, f"{what}: expected {status} {body}, got {actual}"
    if whole:
        assert actual[1] == body, f"{what}: expected {body}, got {actual[1]}"
    else:
        assert {k: actual[1].get(k) for k in body} == body, f"{what}: expected {body} in {actual[1]}"


class SwitchMachine(RuleBasedStateMachine):
    """Set `database`, `clock`, `client`, `runner`, `counts` and `world_tags` on a subclass (see the test)."""

    database: Any = None
    clock: Any = None
    client: Any = None
    runner: Any = None
    counts: Counter[str] = Counter()
    world_tags: tuple[str, ...] = ("fast", "general")

    def __init__(self) -> None:
        super().__init__()
        empty(self.database)
        self.clock.set(EPOCH)
        rating.import_plan("default", RATES, "USD")
        staff = accounts.create_account("staff@example.com", PASSWORD, role="support")
        self.staff = bearer(staff.user_id, mfa_ok=True)
        # A gateway of its own: its idempotency keys name row ids, which the next example uses again.
        gateway = FakeGateway(webhook_secret=WEBHOOK_SECRET)
        provider.install(gateway)
        self.worlds = [World(tag, tag == "fast", k, self.client, gateway) for k, tag in enumerate(self.world_tags)]
        self.model = SwitchModel(config.current())
        for w, amount in PURCHASES.items():
            self.model.purchase(w, money.parse(amount), EPOCH)
        self.serial = 0
        self.issued: list[str] = []  # call ids sent in an authorize, in order
        self.params: dict[str, tuple[int, int, bool, str]] = {}  # call id -> (who, number, by account, callee)
        self.cdr_ids: list[str] = []
        self.keyed: list[tuple[int, str, int, int, bool]] = []  # (src, key, dst, amount, by email) sent with a key

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def _new(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def apply(self, operation: str, *args: Any) -> Any:
        """Run a model operation on a copy; keep the copy if the operation says its changes stay."""
        trial = copy.deepcopy(self.model)
        expected, keep = getattr(trial, operation)(*args)
        if keep:
            self.model = trial
        return expected

    def note(self, text: str) -> None:
        """A Hypothesis event, also counted for the summary the test prints."""
        event(text)
        self.counts[f"- {text}"] += 1

    def each(self, what: str, send: Callable[[World], Answer]) -> Answer:
        """Send to every world; all must answer the same."""
        answers = []
        for world in self.worlds:
            with world.serving():
                answers.append(send(world))
        for world, other in zip(self.worlds[1:], answers[1:], strict=True):
            assert other == answers[0], f"{what}: {self.worlds[0].tag} answered {answers[0]}, {world.tag} {other}"
        return answers[0]

    # -- setup

    @initialize(grants=st.lists(st.tuples(st.integers(0, WALLETS - 1), GRANT_AMOUNT, GRANT_SOURCE, EXPIRY_HOURS),
                                min_size=4, max_size=10))
    def fund(self, grants: list[tuple[int, int, str, int | None]]) -> None:
        for w, amount, source, hours in grants:
            self.top_up(w, amount, source, hours)

    # -- the switch

    def _call_of(self, which: str, pick: int) -> str:
        """A call id: of a call in progress, of a call authorised (the model's), of any authorize sent, of a
        CDR, or unknown; the next kind when there is none of that kind."""
        calls = self.model.calls
        kinds = {
            "live": [c.removesuffix("@w") for c, call in calls.items() if call.source == "switch"
                     and call.status == "authorized"],
            "known": [c.removesuffix("@w") for c, call in calls.items() if call.source == "switch"],
            "issued": self.issued,
            "cdr": self.cdr_ids,
        }
        order = list(kinds)
        for kind in order[order.index(which):] if which in kinds else []:
            if kinds[kind]:
                return kinds[kind][pick % len(kinds[kind])]
        return self._new("x")

    def _authorize(self, how: str, pick: int, params: tuple[int, int, bool, str]) -> str:
        if how == "cdr_id" and self.cdr_ids:
            call_id = self.cdr_ids[pick % len(self.cdr_ids)]
        elif how in ("retry", "other") and self.issued:
            call_id = self.issued[pick % len(self.issued)]
            if how == "retry":
                params = self.params[call_id]
        else:
            how, call_id = "new", self._new("c")
            self.issued.append(call_id)
            self.params[call_id] = params
        who, number, by_account, callee = params
        what = f"authorize {how} {call_id} {params}"
        expected = self.apply("authorize", self.now, f"{call_id}@w", None if who == UNKNOWN else who, callee)
        self.counts["authorize requests"] += 1
        if how == "new":
            self.counts["authorize requests (a new call)"] += 1
        actual = self.each(what, lambda world: world.authorize(call_id, who, number, by_account, callee))
        check(expected, actual, what)
        self.note(f"authorize {how}: {actual[1].get('reason') or actual[1].get('code') or 'authorized'}")
        return call_id

    def _update(self, call_id: str, elapsed: int) -> None:
        what = f"update {call_id} {elapsed}"
        expected = self.apply("update", self.now, f"{call_id}@w", elapsed)
        actual = self.each(what, lambda world: world.update(call_id, elapsed))
        check(expected, actual, what)
        self.note(f"update: {actual[0]} {actual[1].get('authorized')}")

    def _complete(self, call_id: str, how: str, secs: int, disposition: str, times: bool) -> None:
        call = self.model.calls.get(f"{call_id}@w")
        duration = {"zero": 0, "huge": 86_400}.get(how, secs)
        if call is not None:
            if how == "at_max":
                duration = call.max_d
            elif how == "over":
                duration = call.max_d + secs
            elif how in ("same", "other") and call.status == "completed":
                assert call.duration is not None and call.disposition is not None
                duration, disposition = call.duration + (how == "other"), call.disposition
        what = f"complete {call_id} {duration} {disposition}"
        expected = self.apply("complete", self.now, f"{call_id}@w", duration, disposition)
        self.counts["complete requests"] += 1
        if call is not None and call.status == "authorized":
            self.counts["complete requests (a call in progress)"] += 1
        actual = self.each(what, lambda world: world.complete(call_id, duration, disposition, times))
        check(expected, actual, what)
        state = {"authorized": " of a call in progress", "abandoned": " of an abandoned call"}
        self.note(f"complete {how}: {actual[0]}{state.get(call.status, '') if call else ''}")

    @rule(how=st.sampled_from(["new"] * 5 + ["retry", "retry", "other", "cdr_id"]), pick=PICK, who=WHO,
          number=st.integers(0, 1), by_account=st.sampled_from([False] * 5 + [True]), callee=CALLEE)
    def authorize(self, how: str, pick: int, who: int, number: int, by_account: bool, callee: str) -> None:
        """A new call (left in progress), or a retry: the same request, one for another account, a CDR's id."""
        self._authorize(how, pick, (who, number, by_account, callee))

    @rule(which=st.sampled_from(["live"] * 4 + ["known", "unknown"]), pick=PICK,
          elapsed=st.sampled_from([0, 30, 120, 600, 3600, 7200]))
    def update(self, which: str, pick: int, elapsed: int) -> None:
        self._update(self._call_of(which, pick), elapsed)

    @rule(which=st.sampled_from(["live"] * 4 + ["known", "known", "issued", "cdr", "unknown"]), pick=PICK, how=FINISH,
          secs=SECONDS, disposition=DISPOSITION, times=st.booleans())
    def complete(self, which: str, pick: int, how: str, secs: int, disposition: str, times: bool) -> None:
        """Complete a call in progress, or one completed already (the same body or another), a CDR's, an
        unknown one."""
        self._complete(self._call_of(which, pick), how, secs, disposition, times)

    @rule(who=WHO, number=st.integers(0, 1), by_account=st.sampled_from([False] * 5 + [True]), callee=CALLEE,
          elapsed=st.sampled_from([None, None, 0, 60, 600]), how=FINISH, secs=SECONDS, disposition=DISPOSITION,
          times=st.booleans(), again=st.sampled_from([False, False, True]))
    def call(self, who: int, number: int, by_account: bool, callee: str, elapsed: int | None, how: str, secs: int,
             disposition: str, times: bool, again: bool) -> None:
        """A whole call in one step, if authorised: perhaps an update, the complete, perhaps the complete again."""
        call_id = self._authorize("new", 0, (who, number, by_account, callee))
        if f"{call_id}@w" not in self.model.calls:
            return
        if elapsed is not None:
            self._update(call_id, elapsed)
        self._complete(call_id, how, secs, disposition, times)
        if again:
            self._complete(call_id, "same", secs, disposition, times)

    @rule(who=WHO, number=st.integers(0, 1), callee=CALLEE, minutes=st.sampled_from([10, 60, 150, 240]),
          run=st.sampled_from(["none", "sweep-holds", "both"]), elapsed=st.sampled_from([None, 600, 3600]),
          how=FINISH, secs=SECONDS, disposition=DISPOSITION)
    def long_call(self, who: int, number: int, callee: str, minutes: int, run: str, elapsed: int | None, how: str,
                  secs: int, disposition: str) -> None:
        """A call across time, if authorised: credit may expire meanwhile, the hold's deadline may pass and the
        sweep abandon it (then update refuses it and complete charges it late, from available credit)."""
        call_id = self._authorize("new", 0, (who, number, False, callee))
        if f"{call_id}@w" not in self.model.calls:
            return
        self.time_passes(minutes, run)
        if elapsed is not None:
            self._update(call_id, elapsed)
        self._complete(call_id, how, secs, disposition, True)

    @rule(items=st.lists(st.tuples(st.sampled_from(["new"] * 3 + ["switch", "cdr", "again"]), PICK, WHO,
                                   st.integers(0, 1), CALLEE, st.integers(0, 900), DISPOSITION,
                                   st.sampled_from([0, 60, 3600, 86_400])), min_size=1, max_size=4))
    def cdr_batch(self, items: list[tuple[str, int, int, int, str, int, str, int]]) -> None:
        batch: list[MCdr] = []
        numbers: list[int] = []
        for kind, pick, who, number, callee, duration, disposition, ago in items:
            if kind == "switch" and self.issued:
                call_id = self.issued[pick % len(self.issued)]
            elif kind == "cdr" and self.cdr_ids:
                call_id = self.cdr_ids[pick % len(self.cdr_ids)]
            elif kind == "again" and batch:
                call_id = batch[-1].call_id
            else:
                call_id = self._new("d")
                self.cdr_ids.append(call_id)
            answered = self.now - timedelta(seconds=ago + duration)
            batch.append(MCdr(call_id, None if who == UNKNOWN else who, callee, duration, disposition, answered))
            numbers.append(number)
        expected = self.apply("cdrs", self.now, [dataclasses.replace(c, call_id=f"{c.call_id}@w") for c in batch])
        actual = self.each(f"cdrs {batch}", lambda world: world.cdrs(batch, numbers))
        check(expected, actual, f"cdrs {batch}")
        self.note(f"cdrs: {sorted(r['status'] for r in actual[1]['results'])}")

    # -- time, jobs, money

    @rule(minutes=st.sampled_from([5, 30, 90, 150, 360, 1440, 2880]),
          run=st.sampled_from(["none", "expire-lots", "sweep-holds", "both"]))
    def time_passes(self, minutes: int, run: str) -> None:
        self.clock.advance(minutes=minutes)
        self.note(f"time passes, jobs: {run}")
        worlds = len(self.worlds)
        if run in ("sweep-holds", "both"):
            expired, abandoned = self.apply("sweep_job", self.now)
            result = jobs.run_once("sweep-holds")
            assert result == {"expired_holds": worlds * expired, "abandoned_calls": worlds * abandoned}, result
            self.note(f"sweep: {'some' if expired else 'none'}")
        if run in ("expire-lots", "both"):
            lots, broken = self.apply("expire_job", self.now)
            result = jobs.run_once("expire-lots")
            assert (result["lots"], result["broken"]) == (worlds * lots, worlds * broken), result
            self.note(f"expire-lots: {'broke some' if broken else 'nothing due'}")

    @rule(src=st.integers(0, SENDERS - 1), dst=st.integers(0, WALLETS - 1),
          cents=st.integers(1, 300), too_much=st.sampled_from([False] * 9 + [True]), by_email=st.booleans(),
          key=st.sampled_from([None, None, "new", "retry", "reuse"]), pick=PICK)
    def transfer(self, src: int, dst: int, cents: int, too_much: bool, by_email: bool, key: str | None,
                 pick: int) -> None:
        if dst == src:
            dst = (dst + 1) % WALLETS
        amount = self.model.transfer_max + 1_000_000 if too_much else cents * 10_000
        if key in ("retry", "reuse") and self.keyed:
            first = self.keyed[pick % len(self.keyed)]
            if key == "retry":
                src, key, dst, amount, by_email = first
            else:
                src, key = first[0], first[1]
                if dst == src:
                    dst = (dst + 1) % WALLETS
        elif key is not None:
            key = self._new("k")
        if key is not None:
            self.keyed.append((src, key, dst, amount, by_email))
        what = f"transfer {src} -> {dst} {amount} key {key}"
        expected = self.apply("send_transfer", self.now, src, dst, amount, key)
        actual = self.each(what, lambda world: world.transfer(src, dst, amount, by_email, key))
        check(expected, actual, what)
        self.note(f"transfer: {actual[0]} {actual[1].get('code', '')}")

    @rule(w=st.sampled_from(list(PURCHASES)), cents=st.integers(1, 150))
    def refund(self, w: int, cents: int) -> None:
        amount = cents * 10_000
        expected = self.apply("refund", self.now, w, amount)
        actual = self.each(f"refund {w} {amount}", lambda world: world.refund(w, amount, self.staff))
        check(expected, actual, f"refund {w} {amount}")
        self.note(f"refund: {actual[0]} {actual[1].get('code', '')}")

    @rule(w=st.integers(0, WALLETS - 1), amount=GRANT_AMOUNT, source=GRANT_SOURCE, hours=EXPIRY_HOURS)
    def top_up(self, w: int, amount: int, source: str, hours: int | None) -> None:
        """Credit bought during calls (an operator grant here): update may lengthen them."""
        now = self.now
        expires_at = now + (timedelta(hours=hours) if hours else self.model.validity)
        self.model.grant(w, amount, source, expires_at, now)
        for world in self.worlds:
            ledger.grant(world.parties[w].wallet_id, amount, source, expires_at=None if hours is None else expires_at)

    # -- the comparison

    @invariant()
    def worlds_and_model_agree(self) -> None:
        with self.database.engine.connect() as conn:
            tables = read_tables(conn)
        system: Counter[str] = Counter()
        for posting in tables["postings"]:
            if posting.system_account is not None:
                system[posting.system_account] += posting.amount
        rows = [world.rows(tables) for world in self.worlds]
        for world, other in zip(self.worlds[1:], rows[1:], strict=True):
            for table, first in rows[0].items():
                assert other[table] == first, f"{table}: {self.worlds[0].tag} and {world.tag} differ"
        model = self.model
        mine = rows[0]
        for w in range(WALLETS):
            [wallet] = [r for r in mine["wallets"] if r[0] == f"W{w}"]
            assert (wallet[1], wallet[2]) == (model.balance(w), model.held(w)), f"wallet {w}"
            live = [lot.expires_at for lot in model.wallet_lots(w) if lot.remaining > 0]
            if live:  # may be early (a stale flag), never late
                assert wallet[3] is not None and wallet[3] <= min(live), f"next_expiry_at of wallet {w}"
            assert [r[1:6] for r in mine["lots"] if r[0] == f"W{w}"] == [
                lot.row() for lot in model.wallet_lots(w)], f"lots of wallet {w}"
        assert {h[1]: (h[3], h[2], h[7], h[8]) for h in mine["holds"]} == {
            h.key: (h.status, h.amount, h.charged, h.shortfall) for h in model.holds.values()}
        assert {c[0]: (c[3], c[6], c[8], c[9], c[19], c[23], c[20], c[21], c[22], c[25], c[26])
                for c in mine["calls"]} == {call_id: call.row() for call_id, call in model.calls.items()}
        for name in SYSTEM_ACCOUNTS:
            assert system.get(name, 0) == len(self.worlds) * model.system[name], name

    def teardown(self) -> None:
        result = self.runner.invoke(args=["ledger", "audit"])
        assert result.exit_code == 0, result.output


@contextmanager
def counting(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count the fast path's answers (authorize and complete that returned one) and the switch requests that
    went past the lane to Flask, while the fast world is served."""
    counts: Counter[str] = Counter()
    for name in ("authorize", "complete"):
        real = getattr(calls_fastpath, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            result = _real(*args, **kwargs)
            if result is not None:
                counts[f"{_name} fast"] += 1
            return result

        monkeypatch.setattr(calls_fastpath, name, spy)
    lane = app.wsgi_app
    lane = getattr(lane, "app", lane)
    assert isinstance(lane, SwitchLane)
    inner = lane.inner

    def behind_the_lane(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if switch_lane.ENABLED and environ.get("REQUEST_METHOD") == "POST":
            if path == switch_lane.AUTHORIZE_PATH:
                counts["authorize to flask"] += 1
            elif path.startswith(switch_lane.CALLS_PREFIX) and path.endswith(switch_lane.COMPLETE_SUFFIX):
                counts["complete to flask"] += 1
        return inner(environ, start_response)

    monkeypatch.setattr(lane, "inner", behind_the_lane)
    yield counts


def test_the_fast_path_and_the_lane_answer_and_write_what_the_general_path_and_the_model_do(
        app: Any, database: Any, clock: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = provider.install(FakeGateway(webhook_secret=WEBHOOK_SECRET))  # each example installs its own
    try:
        with counting(app, monkeypatch) as counts:
            machine = type("Machine", (SwitchMachine,), {
                "database": database, "clock": clock, "client": app.test_client(), "runner": app.test_cli_runner(),
                "counts": counts, "world_tags": WORLDS[backend.name]})
            run_state_machine_as_test(machine, settings=SETTINGS[backend.name])
    finally:
        provider.install(previous)
        calls_fastpath.ENABLED = ledger_fastpath.ENABLED = switch_lane.ENABLED = True
    # Shown with -s: what the runs did, and how much the fast path and the lane served.
    print("\n".join(f"{n:6d} {what}" for what, n in sorted(counts.items())))  # noqa: T201
    # Not vacuous: the fast world's new calls and calls in progress were mostly served by the lane (both
    # backends) and, on PostgreSQL, by the fast path.
    for kind, which in (("authorize", "a new call"), ("complete", "a call in progress")):
        requests, eligible = counts[f"{kind} requests"], counts[f"{kind} requests ({which})"]
        assert eligible >= 25, counts
        assert requests - counts[f"{kind} to flask"] >= eligible // 2, counts
        if backend.is_pg:
            assert counts[f"{kind} fast"] >= eligible // 2, counts
