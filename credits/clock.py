"""Injectable clock: everything asks `clock.now()`; tests install a FrozenClock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real time, always timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self._at = at.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._at

    def set(self, at: datetime) -> None:
        with self._lock:
            self._at = at.astimezone(UTC)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        with self._lock:
            self._at = self._at + (delta or timedelta(**kwargs))
            return self._at


_current: Clock = SystemClock()


def install(clock: Clock) -> Clock:
    """Make `clock` the one `now()` reads; return the previous one."""
    global _current
    previous, _current = _current, clock
    return previous


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return _current.now()


def utc(dt: datetime) -> datetime:
    """Interpret a naive datetime as UTC; convert an aware one to UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
