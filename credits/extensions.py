"""Hooks by which later features add to shared machinery (ledger audit checks, jobs) without circular imports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_audit_checks: list[Callable[[Any], list[str]]] = []


def register_audit_check(check: Callable[[Any], list[str]]) -> None:
    """Add a check that `ledger audit` runs: it gets a Session and returns violation messages."""
    if check not in _audit_checks:
        _audit_checks.append(check)


def audit_checks() -> list[Callable[[Any], list[str]]]:
    return list(_audit_checks)
