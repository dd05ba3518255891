"""Domain errors: one hierarchy; each says its HTTP status, a stable code and whether its message is safe to show."""

from __future__ import annotations

from typing import Any


class CreditsError(Exception):
    """Base of every error this service raises on purpose."""

    status = 500
    code = "internal_error"
    title = "Internal error"
    #: True when `str(error)` may be shown to the caller as is.
    safe = False

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message or self.title)
        self.message = message or self.title
        self.extra = extra


class ConfigError(CreditsError):
    """The settings are invalid; the service refuses to start."""

    code = "config_error"
    title = "Invalid configuration"
    safe = True


class DomainError(CreditsError):
    """A request the domain refuses; the message is written for the customer or operator."""

    status = 422
    code = "domain_error"
    title = "Request refused"
    safe = True


class ValidationError(DomainError):
    """Malformed input: a bad amount, a missing field, an unknown currency."""

    status = 400
    code = "invalid_input"
    title = "Invalid input"


class NotFound(DomainError):
    """The thing named does not exist, or the caller may not know it exists."""

    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DomainError):
    """The request conflicts with the current state (for example an idempotent replay with a different body)."""

    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyConflict(Conflict):
    """The idempotency key was used before for a different request."""

    code = "idempotency_conflict"
    title = "Idempotency key reused with different parameters"


class InsufficientCredit(DomainError):
    """The wallet's available credit does not cover the amount."""

    code = "insufficient_credit"
    title = "Insufficient credit"


class AccountNotActive(DomainError):
    """The account is frozen, restricted or closed and may not move money."""

    status = 403
    code = "account_not_active"
    title = "Account not active"


class MoneyFrozen(AccountNotActive):
    """Money movement (transfers, purchases with saved cards, auto-recharge) is frozen after a security report
    until staff unfreeze it; calls go on."""

    code = "money_frozen"
    title = "Money movement frozen"


class LimitExceeded(DomainError):
    """A configured limit (transfer minimum, maximum, daily total) refuses the amount."""

    code = "limit_exceeded"
    title = "Limit exceeded"


class Forbidden(DomainError):
    """The caller may not do this."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class Unauthorized(DomainError):
    """No valid credentials. Never says why (missing, unknown, revoked): that would help a guesser."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"
    safe = False
