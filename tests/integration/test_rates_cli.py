"""Rate plans through the operator CLI and the rating service: import (every bad row listed, nothing imported),
atomic replace, currency, export round trip, future price changes, and the per-process prefix-table cache."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from credits.errors import NotFound, ValidationError
from credits.rating import service as rating
from credits.rating.csv_io import HEADER, parse_rates
from credits.rating.engine import Rate
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    SG_CALLEE,
    US_CALLEE,
    USD,
    assert_audit_clean,
    callers_fixture,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
)

HEAD = ",".join(HEADER)
GOOD = [
    "65,Singapore,0.0123,0,60,6,",
    '1,"USA, Canada",0.008,0,60,60,',
    "44,United Kingdom,0.05,0.05,1,1,",
]


def write(tmp_path: Path, name: str, *rows: str, bom: bool = False) -> str:
    path = tmp_path / name
    path.write_text(("\ufeff" if bom else "") + "\n".join((HEAD, *rows)) + "\n", encoding="utf-8")
    return str(path)


def run(runner: Any, *args: str) -> Any:
    return runner.invoke(args=list(args), catch_exceptions=False)


def plan_tables(database: Any) -> dict[str, list[Any]]:
    snapshot = table_snapshot(database)
    return {name: snapshot[name] for name in ("rate_plans", "rates")}


# ---------------------------------------------------------------- import


def test_import_a_plan_from_a_file(runner, tmp_path, switch, callers):
    # (The callers fixture made version 1 of "default"; the file replaces it.)
    result = run(runner, "rates", "import", write(tmp_path, "plan.csv", *GOOD, bom=True), "--plan", "default")
    assert result.exit_code == 0, result.output
    assert "imported 3 rates into plan default (USD), version 2" in result.stdout
    view, rates = rating.export_plan("default")
    assert (view.currency, view.version, view.rates) == ("USD", 2, 3)
    assert sorted(rates, key=lambda r: r.prefix) == [
        Rate("1", "USA, Canada", 8_000, 0, 60, 60), Rate("44", "United Kingdom", 50_000, 50_000, 1, 1),
        Rate("65", "Singapore", 12_300, 0, 60, 6)]
    caller = callers(credit=10 * USD)
    body = switch.authorize("c-1", caller.phone, US_CALLEE).get_json()
    assert (body["rate"]["destination"], body["rate"]["rate_per_minute"]) == ("USA, Canada", "0.008000")


def test_a_bad_file_lists_every_bad_row_and_imports_nothing(runner, tmp_path, database, switch, callers):
    run(runner, "rates", "import", write(tmp_path, "v1.csv", *GOOD), "--plan", "default")
    before = plan_tables(database)
    bad = write(tmp_path, "v2.csv",
                "65,Singapore,0.02,0,60,6,",  # line 2: good
                "6a,Bad prefix,0.02,0,60,6,",  # line 3
                "66,Negative,-0.01,0,60,6,",  # line 4
                "67,Zero increment,0.02,0,60,0,",  # line 5
                "65,Singapore again,0.03,0,60,6,",  # line 6: duplicate prefix + effective_from of line 2
                "68,Short row,0.02,0,60",  # line 7
                "69,Bad date,0.02,0,60,6,2027-13-01",  # line 8
                "70,Fine,0.02,0,60,6,2027-01-01")  # line 9: good
    result = runner.invoke(args=["rates", "import", bad, "--plan", "default"])
    assert result.exit_code == 1
    assert "6 bad rows" in result.stderr
    for line in (3, 4, 5, 6, 7, 8):
        assert f"\nline {line}: " in result.stderr, line
    for line in (2, 9):
        assert f"\nline {line}: " not in result.stderr, line
    assert "duplicate of line 2" in result.stderr
    assert result.stdout == ""
    assert plan_tables(database) == before
    caller = callers(credit=10 * USD)
    assert switch.authorize("c-1", caller.phone, SG_CALLEE).get_json()["rate"]["rate_per_minute"] == "0.012300"


@pytest.mark.parametrize(("rows", "message"), [
    ((), "at least one rate"),
    (("65,Singapore,0.0123,0,60,6,",), None),
], ids=["header-only", "good"])
def test_header_only_file_is_refused(runner, tmp_path, database, rows, message):
    result = runner.invoke(args=["rates", "import", write(tmp_path, "p.csv", *rows), "--plan", "p"])
    if message:
        assert result.exit_code == 1 and message in result.stderr
        assert plan_tables(database) == {"rate_plans": [], "rates": []}
    else:
        assert result.exit_code == 0


def test_a_file_with_a_wrong_header_or_empty(runner, tmp_path, database):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("prefix,name,price\n65,Singapore,0.0123\n", encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    for path in (wrong, empty):
        result = runner.invoke(args=["rates", "import", str(path), "--plan", "p"])
        assert result.exit_code == 1 and "line 1:" in result.stderr
    missing = runner.invoke(args=["rates", "import", str(tmp_path / "nope.csv"), "--plan", "p"])
    assert missing.exit_code != 0
    assert plan_tables(database) == {"rate_plans": [], "rates": []}


def test_reimport_replaces_the_plan_atomically(runner, tmp_path, switch, callers):
    run(runner, "rates", "import", write(tmp_path, "v1.csv", *GOOD), "--plan", "default")
    caller = callers(credit=10 * USD)
    assert switch.authorize("c-1", caller.phone, SG_CALLEE).get_json()["authorized"]
    result = run(runner, "rates", "import", write(tmp_path, "v2.csv", "65,Singapore,0.0200,0,1,1,"),
                 "--plan", "default")
    assert "imported 1 rates into plan default (USD), version 3" in result.stdout  # v1: the callers fixture
    view, rates = rating.export_plan("default")
    assert (view.version, rates) == (3, [Rate("65", "Singapore", 20_000, 0, 1, 1)])
    body = switch.authorize("c-2", caller.phone, SG_CALLEE).get_json()
    assert (body["rate"]["rate_per_minute"], body["rate"]["first_increment_s"]) == ("0.020000", 1)
    assert switch.authorize("c-3", caller.phone, US_CALLEE).get_json()["reason"] == "no_rate"
    # The call authorised under version 1 is charged as it was rated then.
    assert switch.complete("c-1", 125).get_json()["charged"] == "0.025830"
    assert_audit_clean()


def test_plan_currency(runner, tmp_path, database, make):
    path = write(tmp_path, "eur.csv", *GOOD)
    assert run(runner, "rates", "import", path, "--plan", "euro", "--currency", "EUR").exit_code == 0
    assert rating.export_plan("euro")[0].currency == "EUR"
    before = plan_tables(database)
    result = runner.invoke(args=["rates", "import", path, "--plan", "euro", "--currency", "USD"])
    assert result.exit_code == 1 and "plan euro is in EUR, not USD" in result.stderr
    unknown = runner.invoke(args=["rates", "import", path, "--plan", "x", "--currency", "XYZ"])
    assert unknown.exit_code == 1
    assert plan_tables(database) == before
    # A USD wallet cannot be put on a EUR plan: no implicit exchange.
    wallet = make.account(currency="USD").wallet
    with pytest.raises(ValidationError):
        rating.assign_plan(wallet.id, "euro")


def test_a_wallet_in_another_currency_is_not_rated_by_the_default_plan(switch, make):
    from credits.calls import service as calls

    euro = make.account(currency="EUR", credit=10 * USD)
    calls.register_caller_number(euro.wallet.id, "+6561239999")
    body = switch.authorize("c-1", "+6561239999", SG_CALLEE).get_json()  # "default" is in USD
    assert body["reason"] == "no_rate"


# ---------------------------------------------------------------- export


def test_export_round_trips(runner, tmp_path):
    rows = [*GOOD, "447,UK mobile,0.10,0,60,60,2027-01-01", "447,UK mobile,0.12,0,30,6,"]
    run(runner, "rates", "import", write(tmp_path, "p.csv", *rows), "--plan", "default")
    result = run(runner, "rates", "export", "--plan", "default")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == HEAD
    assert sorted(parse_rates(result.stdout, "USD"), key=repr) == sorted(rating.export_plan("default")[1], key=repr)
    out = tmp_path / "out.csv"
    run(runner, "rates", "export", "--plan", "default", "-o", str(out))
    assert out.read_text(encoding="utf-8") == result.stdout
    # What was exported imports back to the same plan.
    run(runner, "rates", "import", str(out), "--plan", "copy")
    assert sorted(rating.export_plan("copy")[1], key=repr) == sorted(rating.export_plan("default")[1], key=repr)
    listed = run(runner, "rates", "list")
    assert "default" in listed.stdout and "copy" in listed.stdout


def test_export_of_an_unknown_plan(runner, app):
    result = runner.invoke(args=["rates", "export", "--plan", "nope"])
    assert result.exit_code == 1 and "no rate plan named nope" in result.stderr
    with pytest.raises(NotFound):
        rating.export_plan("nope")


def test_a_large_file_shows_progress(runner, tmp_path):
    rows = [f"{100000 + i},Destination {i},0.01,0,60,60," for i in range(10_000)]
    result = run(runner, "rates", "import", write(tmp_path, "big.csv", *rows), "--plan", "big")
    assert result.exit_code == 0
    assert "checking rates" in result.stderr
    assert rating.export_plan("big")[0].rates == 10_000


# ---------------------------------------------------------------- future price changes


def test_effective_from_changes_the_price_on_its_day(switch, callers, clock):
    tomorrow = (clock.now() + timedelta(days=1)).date()
    rating.import_plan("default", [
        Rate("65", "Singapore", 12_300, 0, 60, 6),
        Rate("65", "Singapore", 24_600, 0, 60, 6, tomorrow),
    ], "USD")
    caller = callers(credit=10 * USD)
    assert switch.authorize("today", caller.phone, SG_CALLEE).get_json()["rate"]["rate_per_minute"] == "0.012300"
    clock.advance(days=1)
    assert switch.authorize("tomorrow", caller.phone, SG_CALLEE).get_json()["rate"]["rate_per_minute"] == "0.024600"
    # A CDR is rated on the day the call was answered, not the day it arrives.
    yesterday = (clock.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    results = switch.cdrs([
        {"call_id": "cdr-old", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 60,
         "answered_at": yesterday},
        {"call_id": "cdr-new", "caller": caller.phone, "callee": SG_CALLEE, "duration_s": 60,
         "answered_at": clock.now().isoformat()},
    ]).get_json()["results"]
    assert [r["charged"] for r in results] == ["0.012300", "0.024600"]
    assert switch.quote(caller=caller.phone, callee=SG_CALLEE).get_json()["rate"]["rate_per_minute"] == "0.024600"


def test_a_prefix_that_starts_later_falls_back_to_a_shorter_one(switch, callers, clock):
    rating.import_plan("default", [
        Rate("6", "Region 6", 50_000, 0, 60, 60),
        Rate("659", "Singapore mobile", 30_000, 0, 60, 60, date(2027, 1, 1)),
    ], "USD")
    caller = callers(credit=10 * USD)
    assert switch.quote(caller=caller.phone, callee="+6591234567").get_json()["rate"]["prefix"] == "6"
    clock.set(clock.now().replace(year=2027, month=1, day=1, hour=0))
    assert switch.quote(caller=caller.phone, callee="+6591234567").get_json()["rate"]["prefix"] == "659"


# ---------------------------------------------------------------- the prefix-table cache


def test_a_new_app_does_not_trust_a_prefix_table_cached_for_another_database(backend, database, switch, callers,
                                                                             clock):
    from credits import create_app
    from credits.rating.models import RatePlan, RateRow
    from tests.conftest import make_config

    view = rating.import_plan("default", [Rate("65", "Singapore", 12_300, 0, 60, 6)], "USD")
    caller = callers(credit=10 * USD)
    assert switch.authorize("c-1", caller.phone, SG_CALLEE).get_json()["authorized"]
    # The database is emptied and loaded again by another process (as between tests, or a restored backup):
    # its plan has the same id and version as the one this process cached, and other rates.
    plans, rates = RatePlan.__table__, RateRow.__table__
    with database.engine.begin() as conn:
        conn.execute(sa.delete(rates))
        conn.execute(sa.delete(plans))
        conn.execute(sa.insert(plans).values(id=view.id, name="default", currency="USD", version=view.version,
                                             created_at=clock.now(), updated_at=clock.now()))
        conn.execute(sa.insert(rates).values(plan_id=view.id, prefix="65", destination="Singapore",
                                             rate_per_minute=99_000, connect_fee=0, first_increment_s=1,
                                             next_increment_s=1))
    new_app = create_app(make_config(backend.url))
    switch.client = new_app.test_client()
    body = switch.authorize("c-2", caller.phone, SG_CALLEE).get_json()
    assert body["rate"]["rate_per_minute"] == "0.099000"
