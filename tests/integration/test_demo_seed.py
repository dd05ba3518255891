"""`flask --app wsgi demo seed` (what ./scripts/run loads): accounts with credit and caller numbers, a support user,
and the "default" rate plan, so that the switch API can be tried at once. Safe to repeat; refused in production."""

from __future__ import annotations

import dataclasses

import pytest

from credits import config, demo
from credits.calls import service as calls
from credits.errors import ConfigError
from credits.ledger import service as ledger
from credits.rating import service as rating


def test_seed_makes_accounts_a_plan_and_callers_the_switch_can_use(app, database):
    first = demo.seed()
    assert [row.created for row in first] == [True, True, True]
    assert [p.name for p in rating.list_plans()] == ["default"]
    alice = next(row for row in first if row.user.email == "alice@example.com")
    assert alice.caller == "+6581230001" and ledger.balance(alice.account_number).balance == 30_000_000
    answer = calls.authorize("demo-1", alice.caller, "+442079460000")
    assert answer.authorized and answer.rate is not None and answer.rate.prefix == "4420"
    done = calls.complete("demo-1", 61, "answered")
    assert done.charged == 15_250  # 61 s at 0.0150/min in 1 s steps

    again = demo.seed()  # a replay: nothing created, nothing granted twice, the plan kept
    assert [row.created for row in again] == [False, False, False]
    assert ledger.balance(alice.account_number).balance == 30_000_000 - 15_250
    assert [(p.name, p.version) for p in rating.list_plans()] == [("default", rating.list_plans()[0].version)]
    assert not demo.seed_rate_plan()


def test_seed_is_refused_in_production(app, database, monkeypatch):
    production = dataclasses.replace(config.current(), env="production")
    assert production.is_production
    monkeypatch.setattr(config, "current", lambda: production)
    with pytest.raises(ConfigError):
        demo.seed()
    assert rating.list_plans() == []
