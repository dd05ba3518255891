"""The sweep-holds job (as the operator runs it) expires a forgotten call's hold and marks the call abandoned."""

from __future__ import annotations

from datetime import timedelta

from credits.ledger import service as ledger
from tests.integration.switch_fixtures import (  # noqa: F401
    SG_CALLEE,
    assert_audit_clean,
    call_row,
    callers_fixture,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
)


def test_sweep_holds_job_abandons_the_call_and_a_late_complete_still_charges(switch, callers, runner, clock):
    caller = callers()
    body = switch.authorize("forgotten-1", caller.phone, SG_CALLEE).get_json()
    assert body["authorized"] is True
    before = ledger.balance(caller.wallet_id)
    assert before.held > 0

    result = runner.invoke(args=["jobs", "run-once", "sweep-holds"])  # too early: nothing to do
    assert result.exit_code == 0, result.output
    assert '"expired_holds": 0' in result.output and call_row("forgotten-1").status == "authorized"

    clock.advance(timedelta(seconds=body["max_duration_s"] + 3600))
    result = runner.invoke(args=["jobs", "run-once", "sweep-holds"])
    assert result.exit_code == 0, result.output
    assert '"expired_holds": 1' in result.output and '"abandoned_calls": 1' in result.output
    assert call_row("forgotten-1").status == "abandoned"
    assert ledger.balance(caller.wallet_id).held == 0

    done = switch.complete("forgotten-1", 60).get_json()
    assert done["charged"] not in ("0.000000", None)  # charged from available credit after the sweep
    row = call_row("forgotten-1")
    assert row.status == "completed" and row.flagged
    assert_audit_clean()
