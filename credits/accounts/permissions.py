"""Roles and what each may do: one permission table, checked by `credits.web.auth.staff_required`."""

from __future__ import annotations

from credits.accounts.models import ROLES, STAFF_ROLES

#: Every permission a staff route may ask for. A route naming anything else fails when the app is built.
PERMISSIONS = frozenset({
    "accounts.read",            # find a customer, read their profile, transaction log and call records
    "accounts.freeze",          # freeze / unfreeze money movement (with a reason, audit-logged)
    "sessions.revoke",          # sign a customer out everywhere
    "refunds.create",           # refund a purchase (below the approval threshold)
    "refunds.approve",          # second approval of a large refund
    "credit_notes.create",      # grant credit as a correction
    "complaints.handle",        # read and answer complaints
    "security_reports.handle",  # compromise and unauthorised-transaction reports
    "breaches.manage",          # breach register and notices
    "privacy_requests.handle",  # access, erasure, rectification requests
    "accounts.close_underage",  # "reported under 13": close and erase
    "staff.manage",             # give and take staff roles
})

_SUPPORT = frozenset({"accounts.read", "refunds.create", "credit_notes.create", "complaints.handle",
                      "security_reports.handle", "accounts.freeze", "sessions.revoke"})
_SECURITY = frozenset({"accounts.read", "security_reports.handle", "breaches.manage", "privacy_requests.handle",
                       "accounts.freeze", "sessions.revoke", "accounts.close_underage", "refunds.approve"})

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "customer": frozenset(),
    "support": _SUPPORT,
    "security_officer": _SECURITY,
    "admin": PERMISSIONS,
}

assert set(ROLE_PERMISSIONS) == set(ROLES)
assert all(perms <= PERMISSIONS for perms in ROLE_PERMISSIONS.values())


def is_staff(role: str) -> bool:
    return role in STAFF_ROLES


def allows(role: str, permission: str) -> bool:
    """True when `role` has `permission`. Raises ValueError for a permission not in the table (a typo)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return permission in ROLE_PERMISSIONS.get(role, frozenset())
