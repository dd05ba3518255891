"""CHECKLIST J67 across processes: the per-IP sign-in limit holds across two gunicorn servers (two workers each)
sharing Redis, and a client's own X-Forwarded-For does not change the key.

Needs Redis on 127.0.0.1:6379 (CI starts it; skipped elsewhere unless CREDITS_TEST_REQUIRE_REDIS=1). Each run
uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("CREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMIT = 6

pytestmark = pytest.mark.slow


def _redis():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        required = ("CREDITS_TEST_REQUIRE_REDIS", "CREDITS_TEST_REQUIRE_POSTGRES")
        if any(os.environ.get(name) == "1" for name in required):
            pytest.fail(f"Redis is required but does not answer at {REDIS_URL}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    return client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):  # noqa: S310 - loopback
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"gunicorn on port {port} did not answer:\n{log.read_text()[-3000:]}")


def _login(port: int, n: int) -> int:
    body = json.dumps({"email": f"nobody{n}@example.com", "password": "not the password"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/auth/login", data=body, method="POST",
        # A spoofing client: a fresh address in X-Forwarded-For every time. No proxy is configured, so ignored.
        headers={"Content-Type": "application/json", "X-Forwarded-For": f"198.51.100.{n}", "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def servers(tmp_path):
    redis_client = _redis()
    prefix = f"credits-test-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "CREDITS_ENV": "test", "CREDITS_DATABASE_URL": f"sqlite:///{tmp_path / 'credits.db'}",
           "CREDITS_SECRET_KEY": "test-secret-key-0123456789abcdef0123456789", "CREDITS_REDIS_URL": REDIS_URL,
           "CREDITS_RATELIMIT_PREFIX": prefix, "CREDITS_LOGIN_IP_LIMIT": f"{LIMIT} per minute",
           "CREDITS_LOGIN_ACCOUNT_LIMIT": "100 per minute", "CREDITS_PROXY_COUNT": "0"}
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    logs = []
    try:
        for i in range(2):
            port = _free_port()
            log = tmp_path / f"gunicorn-{i}.log"
            logs.append(log.open("wb"))
            proc = subprocess.Popen(  # noqa: S603 - our own venv's gunicorn
                [str(Path(sys.executable).parent / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
                 "--pid", str(tmp_path / f"gunicorn-{i}.pid"), "wsgi:app"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=logs[-1], stderr=subprocess.STDOUT)
            procs.append((proc, port))
            _wait_ready(port, proc, log)
        yield [port for _proc, port in procs]
    finally:
        for proc, _port in procs:
            proc.terminate()
        for proc, _port in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        for handle in logs:
            handle.close()
        for key in redis_client.scan_iter(match=f"*{prefix}*"):
            redis_client.delete(key)
        redis_client.close()


def test_J67_per_ip_limit_holds_across_two_gunicorn_servers_sharing_redis(servers):
    first, second = servers
    statuses = [_login(first if n % 2 == 0 else second, n) for n in range(LIMIT)]
    assert statuses == [401] * LIMIT  # spread over both servers (and their workers)
    # The next attempt is refused wherever it lands: the count lives in Redis, not in a worker.
    assert _login(first, 100) == 429
    assert _login(second, 101) == 429
