"""Throttling when Redis, the shared rate-limit storage, is unreachable (CHECKLIST J66, J67).

A limit store that is down must not take sign-in down with it (every request a 500), nor switch the limits
off: the limiter counts in this process's memory until Redis answers again, says so once in the log, and
sign-in, sign-up and reset keep their limits. Redis is "down" here the cheap way: a loopback port nobody
listens on (connection refused at once).
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from credits.web import limits
from tests.integration.accounts_helpers import login, register


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


DEAD_REDIS = f"redis://127.0.0.1:{_dead_port()}/0"


@pytest.fixture(autouse=True)
def _fresh_limiter_state():
    # The limiter is module-level (as every Flask extension); its "storage is dead" flag must not leak.
    yield
    limits.limiter._storage_dead = False  # noqa: SLF001 - reset between apps of the test session


@pytest.mark.parametrize("settings_overrides", [{"redis_url": DEAD_REDIS, "login_ip_limit": "3 per minute"}])
def test_J67_per_ip_limit_still_holds_in_memory_when_redis_is_down(client, caplog):
    caplog.set_level(logging.WARNING)
    for i in range(3):
        r = client.post("/api/v1/auth/login", json={"email": f"u{i}@example.com", "password": "x" * 8})
        assert r.status_code == 401, (i, r.status_code, r.get_data(as_text=True))
    r = client.post("/api/v1/auth/login", json={"email": "u9@example.com", "password": "x" * 8})
    assert r.status_code == 429 and r.mimetype == "application/problem+json"
    warnings = [rec for rec in caplog.records if "rate limit" in rec.getMessage().lower()
                and rec.levelno >= logging.WARNING]
    assert warnings, [rec.getMessage() for rec in caplog.records]


@pytest.mark.parametrize("settings_overrides", [{"redis_url": DEAD_REDIS}])
def test_J66_sign_up_sign_in_and_the_account_throttle_work_when_redis_is_down(client, monkeypatch):
    assert register(client).status_code == 201
    assert login(client).status_code == 200
    now = [time.time()]
    monkeypatch.setattr(time, "time", lambda: now[0])
    for _ in range(5):
        assert login(client, password="wrong password").status_code == 401
    blocked = login(client)  # the per-account count went on, in memory
    assert blocked.status_code == 429 and 1 <= int(blocked.headers["Retry-After"]) <= 60
    now[0] += 61
    assert login(client).status_code == 200
    assert client.post("/api/v1/auth/password-reset", json={"email": "x@example.com"}).status_code == 202


@pytest.mark.parametrize("settings_overrides", [{"redis_url": DEAD_REDIS}])
def test_the_account_throttle_alone_falls_back_when_it_meets_the_dead_store_first(app, client):
    # The per-account check can be the first to reach the store (a route limited per account only): it falls
    # back too, rather than answering 500.
    register(client)
    with app.test_request_context("/"):
        for _ in range(3):
            with pytest.raises(limits.CreditsError), limits.account_throttle("login_account_limit", "login", "k1"):
                raise limits.CreditsError("invalid_credentials")
        assert limits.limiter._storage_dead  # noqa: SLF001 - the fallback is in use
