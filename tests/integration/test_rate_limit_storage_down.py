"""Throttling when Redis, the shared rate-limit storage, is unreachable (CHECKLIST J66, J67).

A limit store that is down must not take sign-in down with it (every request a 500), nor switch the limits
off: the limiter counts in this process's memory until Redis answers again, says so once in the log, and
sign-in, sign-up and reset keep their limits. Redis is "down" here the cheap way: a loopback port nobody
listens on (connection refused at once). This process keeps that port bound without listening, so no other
process can start a server there while the tests run.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from credits.web import limits
from tests.integration.accounts_helpers import login, register


def _dead_port() -> int:
    """A loopback port that refuses connections for as long as this process lives: bound here, never listening.

    (A port merely chosen and closed again at import could be taken by any server started during the minutes
    before these tests run.)
    """
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    atexit.register(held.close)
    return int(held.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class _RedisServer:
    """A redis-server of this test's own on a loopback port, started and stopped by its pid."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = 0
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> None:
        """Start on `port`, or on a port free right now (another one if some other process takes it first).

        Started means: the server answering on the port is this process (INFO's process_id), not merely that
        something accepts connections there.
        """
        for _ in range(1 if port else 5):
            self.port = port or _free_port()
            self.proc = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                 "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._answers():
                return
            self.stop()
        raise AssertionError(f"redis-server did not start on 127.0.0.1:{self.port}")

    def _answers(self) -> bool:
        import redis

        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # it could not bind the port
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
            try:
                if client.info("server")["process_id"] == self.proc.pid:
                    return True
            except redis.RedisError:
                pass
            finally:
                client.close()
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def keys(self) -> int:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            return len(list(client.scan_iter(match="*login_ip_limit*")))
        finally:
            client.close()


@pytest.fixture
def own_redis(tmp_path):
    server = _RedisServer(tmp_path)
    server.start()  # its port is chosen now, right before it is bound
    yield server
    server.stop()


@pytest.fixture
def settings_overrides(own_redis):
    """The app of the test below (the only one here that does not parametrize its settings) uses its own Redis."""
    return {"redis_url": f"redis://127.0.0.1:{own_redis.port}/0", "login_ip_limit": "50 per minute"}


def test_the_limits_go_back_to_redis_once_it_answers_again(own_redis, client, monkeypatch):
    now = [time.time()]
    monkeypatch.setattr(time, "time", lambda: now[0])

    def attempt() -> int:
        return client.post("/api/v1/auth/login", json={"email": "u@example.com", "password": "x" * 8}).status_code

    assert attempt() == 401 and own_redis.keys() == 1  # counted in Redis
    own_redis.stop()
    assert attempt() == 401 and limits.limiter._storage_dead  # noqa: SLF001 - Redis down: counted in memory
    now[0] += 1.5
    assert attempt() == 401 and limits.limiter._storage_dead  # noqa: SLF001 - looked again: still down
    own_redis.start(own_redis.port)  # an empty Redis (nothing saved), on the same port
    now[0] += 100  # past any back-off (at most 32 s): the next limited request looks again and finds it
    assert attempt() == 401
    assert not limits.limiter._storage_dead  # noqa: SLF001
    assert attempt() == 401 and own_redis.keys() == 1  # counted in Redis again
