"""Authentication decorators for API routes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from credits.accounts import apikeys

F = TypeVar("F", bound=Callable[..., Any])


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_api_key(scope: str) -> Callable[[F], F]:
    """Refuse the request with 401 (no detail) unless it carries a live API key of `scope`."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.api_key = apikeys.authenticate(bearer_token(), scope, request.remote_addr)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
