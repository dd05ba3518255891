"""Switch API test fixtures: the "default" rate plan, a switch API key, callers with credit, an HTTP helper.

A test module imports the fixtures it uses (`from tests.integration.switch_fixtures import switch_fixture`);
each is registered under its short name (`switch`), so that a test's argument does not shadow the import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from credits import db as db_mod
from credits.accounts import apikeys
from credits.accounts import service as accounts
from credits.accounts.service import AccountView
from credits.ledger import service as ledger
from credits.ledger.audit import run_audit
from credits.rating import service as rating
from credits.rating.engine import Rate
from credits.rating.service import PlanView

USD = 1_000_000
API = "/api/v1"

# Prices in micro-units per minute. 65 (Singapore) is the sub-cent 60/6 case of the brief: 125 s bills 126 s,
# 12300 * 126 / 60 = 25830 exactly. 1 (North America) is the 60/60 case of DESIGN §5: 125 s bills 180 s
# at 0.008/min = 0.024000. 1415 is a longer prefix inside 1 (longest match wins). 44 has a connect fee and
# 1/1 increments. 1800 is free.
SG = Rate("65", "Singapore", 12_300, 0, 60, 6)
SG_MOBILE = Rate("659", "Singapore mobile", 30_000, 0, 30, 6)
US = Rate("1", "United States", 8_000, 0, 60, 60)
SF = Rate("1415", "United States San Francisco", 6_000, 0, 30, 6)
UK = Rate("44", "United Kingdom", 50_000, 50_000, 1, 1)
FREE = Rate("1800", "US toll-free", 0, 0, 60, 60)
DEFAULT_RATES = [SG, SG_MOBILE, US, SF, UK, FREE]

SG_CALLEE = "+6561234567"
US_CALLEE = "+12125550100"
SF_CALLEE = "+14155550100"
UK_CALLEE = "+442071234567"
FREE_CALLEE = "+18005550100"
NO_RATE_CALLEE = "+81312345678"


@pytest.fixture(name="plan")
def plan_fixture(app: Any) -> PlanView:
    """The plan named "default" (every wallet without a plan of its own is rated with it)."""
    return rating.import_plan("default", DEFAULT_RATES, "USD")


@pytest.fixture(name="switch_key")
def switch_key_fixture(app: Any) -> apikeys.CreatedKey:
    return apikeys.create_key("switch-1", "switch")


@dataclass
class Switch:
    """The switch's side of the API: a test client that sends the bearer key."""

    client: Any
    key: str
    environ: dict[str, str] = field(default_factory=dict)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        kw.setdefault("headers", self.headers())
        kw.setdefault("environ_base", dict(self.environ))
        if body is not None:
            kw["json"] = body
        return self.client.post(API + path, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        kw.setdefault("headers", self.headers())
        kw.setdefault("environ_base", dict(self.environ))
        return self.client.get(API + path, **kw)

    def authorize(self, call_id: str, caller: str, callee: str, **extra: Any) -> Any:
        return self.post("/calls/authorize", {"call_id": call_id, "caller": caller, "callee": callee, **extra})

    def update(self, call_id: str, elapsed_s: Any) -> Any:
        return self.post(f"/calls/{call_id}/update", {"elapsed_s": elapsed_s})

    def complete(self, call_id: str, duration_s: Any, disposition: str = "answered", **extra: Any) -> Any:
        return self.post(f"/calls/{call_id}/complete", {"duration_s": duration_s, "disposition": disposition,
                                                         **extra})

    def cdrs(self, items: list[Any]) -> Any:
        return self.post("/cdrs", {"cdrs": items})

    def balance(self, **query: str) -> Any:
        return self.get("/balance", query_string=query)

    def quote(self, **query: str) -> Any:
        return self.get("/quote", query_string=query)


@pytest.fixture(name="switch")
def switch_fixture(client: Any, switch_key: apikeys.CreatedKey) -> Switch:
    return Switch(client, switch_key.secret)


@dataclass(frozen=True)
class Caller:
    account: AccountView
    phone: str

    @property
    def wallet_id(self) -> int:
        return self.account.wallet.id

    @property
    def number(self) -> str:
        return self.account.wallet.account_number

    def wallet(self) -> ledger.WalletView:
        return ledger.get_wallet(self.wallet_id)


CallerFactory = Callable[..., Caller]


@pytest.fixture(name="callers")
def callers_fixture(app: Any, plan: PlanView) -> CallerFactory:
    """Make an account with a registered caller number and `credit` micro-units of purchased credit."""
    count = [0]

    def make(phone: str | None = None, credit: int = 10 * USD, *, status: str = "active",
             plan_name: str | None = None, **grant_kw: Any) -> Caller:
        count[0] += 1
        phone = phone or f"+656100{count[0]:04d}"
        account = accounts.create_account(f"caller{count[0]}@example.com", "correct horse battery", phone=phone,
                                          plan=plan_name)
        if credit:
            ledger.grant(account.wallet.id, credit, grant_kw.pop("source", "purchase"), **grant_kw)
        if status != "active":
            accounts.set_status(account.user_id, status)
        return Caller(account, phone)

    return make


# ---------------------------------------------------------------- checks


def assert_audit_clean() -> None:
    report = run_audit()
    assert report.ok, report.text()


def holds_of(wallet_id: int) -> list[Any]:
    """The wallet's holds (id, key, amount, status, charged, shortfall), oldest first."""
    from credits.ledger.models import Hold

    with db_mod.get().engine.connect() as conn:
        h = Hold.__table__
        return list(conn.execute(
            sa.select(h.c.id, h.c.key, h.c.amount, h.c.status, h.c.charged, h.c.shortfall, h.c.expires_at)
            .where(h.c.wallet_id == wallet_id).order_by(h.c.id)
        ).all())


def call_row(call_id: str) -> Any:
    from credits.calls.models import Call

    with db_mod.get().engine.connect() as conn:
        return conn.execute(sa.select(Call.__table__).where(Call.__table__.c.call_id == call_id)).one()


def wallet_rows(wallet_id: int) -> dict[str, Any]:
    """What a wallet's calls left in the database, without ids, keys and times."""
    with db_mod.get().engine.connect() as conn:
        def q(sql: str) -> list[Any]:
            return [tuple(r) for r in conn.execute(sa.text(sql), {"w": wallet_id}).all()]

        return {
            "wallet": q("SELECT balance, held, next_expiry_at IS NULL FROM wallets WHERE id = :w"),
            "lots": q("SELECT source, granted, remaining, expires_at FROM lots WHERE wallet_id = :w ORDER BY id"),
            "holds": q("SELECT amount, status, charged, shortfall, tx_id IS NULL, finished_at IS NULL "
                       "FROM holds WHERE wallet_id = :w ORDER BY id"),
            "calls": q("SELECT status, caller = '', callee, max_duration_s, reserved, rate_prefix, duration_s, "
                       "billed_s, cost, charged, disposition, end_reason, flagged, flag_reason, answered_at IS NULL, "
                       "ended_at - answered_at FROM calls WHERE wallet_id = :w ORDER BY id"),
            "postings": q("SELECT p.system_account, p.lot_id IS NULL, p.amount, j.kind, j.memo FROM postings p "
                          "JOIN journal_transactions j ON j.id = p.tx_id WHERE p.tx_id IN "
                          "(SELECT tx_id FROM holds WHERE wallet_id = :w) ORDER BY p.id"),
        }


_NOT_COUNTED = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


@contextmanager
def statements(database: db_mod.Database) -> Iterator[list[str]]:
    """Collect the SQL statements the engine sends, without transaction control (BEGIN IMMEDIATE included)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(_NOT_COUNTED):
            seen.append(" ".join(statement.split()))

    def raw(statement: str) -> None:  # the PostgreSQL fast path's statements (credits.db.RawTransaction)
        before(None, None, statement)

    sa.event.listen(database.engine, "before_cursor_execute", before)
    db_mod.raw_statement_hooks.append(raw)
    try:
        yield seen
    finally:
        db_mod.raw_statement_hooks.remove(raw)
        sa.event.remove(database.engine, "before_cursor_execute", before)


@pytest.fixture(name="principals")
def principals_fixture(app: Any, make: Any, callers: CallerFactory, clock: Any) -> dict[str | None, dict[str, str]]:
    """Request headers of each kind of caller: a customer, a support member, the switch (whose key has just
    authorised call c-1) and nobody; for tests that send the same bad input to every kind of route."""
    from tests.integration.payments_fixtures import bearer, staff

    caller = callers()
    key = apikeys.create_key("switch-1", "switch")
    switch = {"Authorization": f"Bearer {key.secret}"}
    call = {"call_id": "c-1", "caller": caller.phone, "callee": SG_CALLEE}
    assert app.test_client().post("/api/v1/calls/authorize", json=call, headers=switch).json["authorized"]
    clock.advance(seconds=120)  # the key's last use is due to be written again: a refused request must not write it
    return {"customer": bearer(caller.account.user_id), "support": staff(make, "support")[1], "switch": switch,
            None: {}}


@pytest.fixture(name="lane", params=[True, False], ids=["lane-on", "lane-off"])
def lane_fixture(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run the test with the switch lane on, then off (Flask alone)."""
    from credits.web import switch_lane

    switch_lane.ENABLED = request.param
    try:
        yield request.param
    finally:
        switch_lane.ENABLED = True
