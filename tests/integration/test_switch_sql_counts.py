"""SQL statements per switch request, whole HTTP request through the test client: authorize <= 5, complete <= 10.

Counted with a before_cursor_execute listener on the engine, without transaction control (BEGIN, SQLite's
BEGIN IMMEDIATE, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, PRAGMA). The key's last use is fresh, as it is for a
busy switch (it is written at most once a minute), and the plan's prefix table is cached, as it is after the
first call of a process.
"""

from __future__ import annotations

from typing import Any

from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    SG_CALLEE,
    USD,
    assert_audit_clean,
    callers_fixture,
    plan_fixture,
    statements,
    switch_fixture,
    switch_key_fixture,
)

AUTHORIZE_MAX = 5
COMPLETE_MAX = 10


def warm(switch: Any, caller: Any) -> None:
    """One call end to end, so that the key's last use is fresh and the prefix table cached."""
    assert switch.authorize("warm-up", caller.phone, SG_CALLEE).get_json()["authorized"]
    assert switch.complete("warm-up", 10).status_code == 200


def test_authorize_and_complete_statement_counts(switch, callers, database):
    caller = callers(credit=10 * USD)
    warm(switch, caller)
    with statements(database) as authorize_sql:
        resp = switch.authorize("c-1", caller.phone, SG_CALLEE)
    assert resp.get_json()["authorized"]
    with statements(database) as complete_sql:
        resp = switch.complete("c-1", 125)
    assert resp.get_json()["charged"] == "0.025830"
    assert len(authorize_sql) <= AUTHORIZE_MAX, "\n".join(authorize_sql)
    assert len(complete_sql) <= COMPLETE_MAX, "\n".join(complete_sql)
    assert_audit_clean()


def test_complete_drawing_from_several_lots_stays_within_the_budget(switch, callers, database, clock):
    from datetime import timedelta

    from credits.ledger import service as ledger

    caller = callers(credit=10 * USD)
    warm(switch, caller)
    # 0.01 expiring first is drawn first, and cannot pay 125 s alone: the charge takes from two lots.
    ledger.grant(caller.wallet_id, 10_000, "purchase", expires_at=clock.now() + timedelta(days=30))
    switch.authorize("c-1", caller.phone, SG_CALLEE)
    with statements(database) as complete_sql:
        resp = switch.complete("c-1", 125)
    assert resp.get_json()["charged"] == "0.025830"
    assert len(complete_sql) <= COMPLETE_MAX, "\n".join(complete_sql)
    assert [lot.remaining for lot in ledger.lots(caller.wallet_id, include_empty=True)][:1] == [0]
    assert_audit_clean()


def test_unanswered_complete_and_refusals_are_cheaper(switch, callers, database):
    caller = callers(credit=10 * USD)
    broke = callers(credit=0)
    warm(switch, caller)
    switch.authorize("c-1", caller.phone, SG_CALLEE)
    with statements(database) as sql:
        assert switch.complete("c-1", 0, "no_answer").get_json()["charged"] == "0.000000"
    assert len(sql) <= 6, "\n".join(sql)
    with statements(database) as sql:
        assert switch.authorize("c-2", broke.phone, SG_CALLEE).get_json()["reason"] == "insufficient_credit"
    assert len(sql) <= 3, "\n".join(sql)


def test_a_cdr_batch_costs_about_what_one_cdr_does(switch, callers, database):
    first = callers(credit=10 * USD)
    second = callers(credit=1_000)  # too little: some of its calls go to credit_loss
    warm(switch, first)

    def batch(prefix: str, n: int) -> list[dict[str, Any]]:
        return [{"call_id": f"{prefix}-{i}", "caller": (first if i % 2 else second).phone, "callee": SG_CALLEE,
                 "duration_s": 30 + i, "answered_at": "2026-11-22T11:00:00Z"} for i in range(n)]

    with statements(database) as one_sql:
        assert switch.cdrs(batch("one", 1)).get_json()["results"][0]["status"] == "charged"
    with statements(database) as many_sql:
        results = switch.cdrs(batch("many", 200)).get_json()["results"]
    assert {r["status"] for r in results} == {"charged"}
    # Whatever the batch: the key, the caller numbers, the wallets, the call rows, the lots, the journal,
    # the postings, the lots again, the wallets again, the call rows again.
    assert len(one_sql) <= 10, "\n".join(one_sql)
    assert len(many_sql) <= 10, "\n".join(s[:200] for s in many_sql)
    assert_audit_clean()
