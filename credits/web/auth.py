"""Authentication decorators for API routes: switch API keys, customer sessions and tokens, staff permissions.

A customer or staff request authenticates with the `__Host-session` cookie (then every unsafe method needs the
session's CSRF token in `X-CSRF-Token`) or with `Authorization: Bearer <personal API token>` (no CSRF: a browser
never adds that header by itself).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar, overload

from flask import Response, g, request

from credits import db
from credits.accounts import apikeys, permissions, sessions
from credits.errors import DomainError, Forbidden, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


def bearer_token() -> str | None:
    return parse_bearer(request.headers.get("Authorization", ""))


def parse_bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_api_key(scope: str) -> Callable[[F], F]:
    """Refuse the request with 401 (no detail) unless it carries a live API key of `scope`."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with db.sticky_raw_connection():  # the key check and the work share one pooled connection
                key = apikeys.authenticate(bearer_token(), scope, request.remote_addr)
                g.api_key = key
                response = view(*args, **kwargs)
            # Only once served: a request refused as malformed (400/404/409) writes nothing, not even this.
            apikeys.record_use(key)
            return response

        return wrapper  # type: ignore[return-value]

    return decorator


SESSION_COOKIE = "__Host-session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfFailed(DomainError):
    """A cookie-authenticated request that changes state came without the session's CSRF token."""

    status = 400
    code = "csrf_failed"
    title = "Missing or invalid CSRF token"


class MfaRequired(DomainError):
    """The password was right but the session still owes its second factor (POST /api/v1/auth/mfa)."""

    status = 401
    code = "mfa_required"
    title = "Second factor required"


def session_cookie() -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def authenticate(*, allow_mfa_pending: bool = False) -> sessions.SessionInfo:
    """Authenticate the current request by personal API token or session cookie; fill `g`; return the session.

    Raises Unauthorized (no detail), MfaRequired, or CsrfFailed (cookie, unsafe method, token missing or wrong).
    """
    token = bearer_token()
    if token is not None:
        info = sessions.resolve(token, kind="api")
        g.auth_via = "bearer"
    else:
        info = sessions.resolve(session_cookie(), kind="web")
        g.auth_via = "cookie"
        if request.method not in SAFE_METHODS:
            presented = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(presented.encode(), info.csrf_token.encode()):
                raise CsrfFailed()
    g.user_id, g.role, g.session_id, g.session = info.user_id, info.role, info.id, info
    if info.mfa_pending and not allow_mfa_pending:
        raise MfaRequired()
    return info


@overload
def login_required(view: F) -> F: ...
@overload
def login_required(*, allow_mfa_pending: bool = False) -> Callable[[F], F]: ...


def login_required(view: F | None = None, *, allow_mfa_pending: bool = False) -> Any:
    """Refuse the request with 401 problem+json unless it carries a live session cookie or personal API token.

    Sets `g.user_id`, `g.role`, `g.session_id` and `g.session`. A session that still owes its second factor is
    refused with 401 `mfa_required` unless `allow_mfa_pending` (the MFA step itself).
    """

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authenticate(allow_mfa_pending=allow_mfa_pending)
            return fn(*args, **kwargs)

        wrapper.login_required = True  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator(view) if view is not None else decorator


def staff_required(permission: str) -> Callable[[F], F]:
    """Allow only staff whose role has `permission` and whose session passed MFA; 401 unauthenticated, 403 else.

    Raises ValueError at import time for a permission the table in credits.accounts.permissions does not know.
    """
    permissions.allows("admin", permission)  # fail early on a typo

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            info = authenticate(allow_mfa_pending=True)
            if not permissions.allows(info.role, permission) or not info.mfa_ok:
                raise Forbidden("staff routes need a staff role with this permission and a second factor")
            return fn(*args, **kwargs)

        wrapper.staff_permission = permission  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def current_user_id() -> int:
    """The authenticated user's id; raises Unauthorized outside a `login_required`/`staff_required` route."""
    user_id = getattr(g, "user_id", None)
    if user_id is None:
        raise Unauthorized()
    return int(user_id)


def set_session_cookie(response: Response, token: str) -> None:
    """Give the client its session token: `__Host-` (Secure, Path=/, no Domain), HttpOnly, SameSite=Lax.

    No Max-Age: a browser session cookie; the server enforces idle and absolute timeouts.
    """
    response.set_cookie(SESSION_COOKIE, token, secure=True, httponly=True, samesite="Lax", path="/")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="Lax", path="/")
