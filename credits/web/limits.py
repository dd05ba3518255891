"""Throttling (CHECKLIST J66, J67) with Flask-Limiter: per client IP on sign-in, sign-up, reset and OTP entry, and
per account on failed password and code attempts.

Storage is Redis when CREDITS_REDIS_URL is set (shared by every worker and instance: memory storage would give
each gunicorn worker its own count), memory otherwise. When Redis cannot be reached (refused, or no answer
within STORE_TIMEOUT_S), the limits are counted in the process's memory until it answers again (Flask-Limiter's
in-memory fallback, which looks for Redis again after 1, 2, 4 ... 32 s), with a WARNING: sign-in neither fails
with a 500 nor goes unthrottled because the limit store is down; the counts are per process meanwhile.

The client IP is `request.remote_addr`, which only werkzeug's ProxyFix (CREDITS_PROXY_COUNT > 0) rewrites from
X-Forwarded-For: a header sent by the client itself never changes the key. Per-account limits count failures
only, tier by tier ("5 per minute; 10 per 15 minutes; 100 per day"), so the wait grows with the failures, nobody
is locked out for good, and a success clears the count.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flask import Flask, Response, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.strategies import RateLimiter

from credits import config
from credits.errors import CreditsError, DomainError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

log = logging.getLogger(__name__)

#: Connect and read timeout towards Redis: a limit store that stops answering costs each request this much
#: once, then the in-memory fallback takes over (without it, a blackholed Redis would hang sign-in for minutes).
STORE_TIMEOUT_S = 0.5


class TooManyAttempts(DomainError):
    """Too many attempts: wait `retry_after` seconds."""

    status = 429
    code = "too_many_requests"
    title = "Too many attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many attempts. Please wait a little and try again.")
        self.retry_after = max(1, retry_after)


def client_ip() -> str:
    """The client address as the proxy-fixed request sees it (never a header the client set, unless trusted)."""
    return request.remote_addr or "127.0.0.1"


def _prefix() -> str:
    return config.current().ratelimit_prefix


def ip_key() -> str:
    return f"{_prefix()}:ip:{client_ip()}"


# Module-level, like every Flask extension: route decorators need it at import time; `init_app` binds storage.
limiter = Limiter(key_func=ip_key, strategy="moving-window", headers_enabled=True)


def ip_limit(setting: str) -> Callable[[F], F]:
    """Limit a route per client IP with the limit string of setting `setting` (e.g. "login_ip_limit")."""
    if not hasattr(config.Config, setting):
        raise ValueError(f"no setting {setting!r}")
    return limiter.limit(lambda: str(getattr(config.current(), setting)), key_func=ip_key,
                         scope=setting)  # type: ignore[return-value]


def _items(setting: str) -> list[RateLimitItem]:
    return list(parse_many(str(getattr(config.current(), setting))))


def account_key(value: object) -> str:
    """A stable key for an account named by email, that does not put the address itself into Redis."""
    from credits.accounts.service import email_index
    from credits.errors import ValidationError

    try:
        return email_index(value)  # type: ignore[arg-type]
    except ValidationError:
        return hashlib.sha256(str(value).lower().encode()).hexdigest()


def _on_store(operation: Callable[[RateLimiter], T]) -> T:
    """Run `operation` on the limiter's strategy; when Redis fails, switch to the in-memory fallback (as
    Flask-Limiter does for the route limits) and run it there instead of failing the request."""
    try:
        return operation(limiter.limiter)
    except StorageError as exc:
        if not limiter._in_memory_fallback_enabled or limiter._storage_dead:  # noqa: SLF001 - its own switch
            raise
        log.warning("rate limit store unreachable (%s): counting in this process's memory until it answers",
                    type(exc.storage_error).__name__)
        limiter._storage_dead = True  # noqa: SLF001 - the flag its route limits and recovery check use
        return operation(limiter.limiter)


def _check(setting: str, kind: str, key: str) -> None:
    def waits(strategy: RateLimiter) -> list[int]:
        found = []
        for item in _items(setting):
            if not strategy.test(item, _prefix(), kind, key):
                reset_at, _remaining = strategy.get_window_stats(item, _prefix(), kind, key)
                found.append(math.ceil(reset_at - time.time()))
        return found

    if found := _on_store(waits):
        raise TooManyAttempts(max(found))


def _fail(setting: str, kind: str, key: str) -> None:
    def hit(strategy: RateLimiter) -> None:
        for item in _items(setting):
            strategy.hit(item, _prefix(), kind, key)

    _on_store(hit)


def _clear(setting: str, kind: str, key: str) -> None:
    def clear(strategy: RateLimiter) -> None:
        for item in _items(setting):
            strategy.clear(item, _prefix(), kind, key)

    _on_store(clear)


FAILURE_CODES = frozenset({"invalid_credentials", "mfa_invalid", "reauthentication_failed"})


@contextlib.contextmanager
def account_throttle(setting: str, kind: str, key: str, *, count: Callable[[CreditsError], bool] | None = None,
                     clear_on_success: bool = True) -> Iterator[None]:
    """Refuse with 429 while account `key` is over `setting` for `kind`; count failures; clear on success.

    A failure is a CreditsError whose code is in FAILURE_CODES (or that `count` accepts).
    """
    if not limiter.enabled:
        yield
        return
    _check(setting, kind, key)
    try:
        yield
    except CreditsError as exc:
        if (count or (lambda e: e.code in FAILURE_CODES))(exc):
            _fail(setting, kind, key)
        raise
    if clear_on_success:
        _clear(setting, kind, key)


def account_hit(setting: str, kind: str, key: str) -> None:
    """Count one use for `key` and refuse with 429 when over `setting` (per-account limits on every attempt)."""
    if not limiter.enabled:
        return
    _check(setting, kind, key)
    _fail(setting, kind, key)


#: Blueprints without any limit, whose requests skip the limiter's before_request check altogether (exempting
#: them is not enough: the limiter still resolves the limits of every request). The switch API: an
#: authenticated machine on the hot path of every call, where refusing a request would cut a customer's call.
UNLIMITED_BLUEPRINTS = frozenset({"switch"})


def _skip_unlimited_blueprints(app: Flask) -> None:
    hooks = app.before_request_funcs.setdefault(None, [])
    check = limiter._check_request_limit  # noqa: SLF001 - the hook init_app installed
    if check not in hooks:
        return
    position = hooks.index(check)

    def _check_limits() -> None:
        if request.blueprint not in UNLIMITED_BLUEPRINTS:
            check()

    hooks[position] = _check_limits


def init_app(app: Flask, settings: config.Config) -> None:
    """Bind the limiter to `app`: Redis storage when configured, memory otherwise; 429 as problem+json."""
    from credits.web.errors import problem

    for name in ("login_account_limit", "login_ip_limit", "register_ip_limit", "reset_ip_limit",
                 "reset_account_limit", "otp_account_limit", "otp_ip_limit"):
        try:
            parse_many(getattr(settings, name))
        except ValueError as exc:
            from credits.errors import ConfigError

            raise ConfigError(f"CREDITS_{name.upper()} is not a rate limit string: {exc}") from exc
    app.config["RATELIMIT_STORAGE_URI"] = settings.redis_url or "memory://"
    app.config.setdefault("RATELIMIT_ENABLED", True)
    if settings.redis_url:
        # Redis down: count in memory (logged once, Redis tried again with back-off) rather than a 500 on
        # every limited route; errors wrapped as limits' StorageError so _on_store knows them.
        app.config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] = True
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {
            "socket_connect_timeout": STORE_TIMEOUT_S, "socket_timeout": STORE_TIMEOUT_S, "wrap_exceptions": True,
        }
    limiter.init_app(app)
    _skip_unlimited_blueprints(app)

    @app.errorhandler(TooManyAttempts)
    def _too_many(exc: TooManyAttempts) -> Response:
        resp = problem(429, exc.title, exc.message, exc.code)
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
