"""The payments jobs (`auto-recharge`, `reconcile-payments`) and the ledger audit check, registered on import.

create_app imports this module, so `flask --app wsgi jobs run` / `jobs run-once NAME` and `ledger audit` know them.
Each imports what it runs only when it runs (credits.payments.reconcile pulls in most of the payments feature).
"""

from __future__ import annotations

from typing import Any

from credits import extensions, jobs


def _auto_recharge() -> dict[str, Any]:
    from credits.payments import auto_recharge

    return auto_recharge.run()


def _reconcile() -> dict[str, Any]:
    from credits.payments import reconcile

    return reconcile.run()


def _check_grants(session: Any) -> list[str]:
    from credits.payments import reconcile

    return reconcile.check_grants(session)


def register() -> None:
    jobs.register("auto-recharge", _auto_recharge, 60,
                  "charge saved cards of wallets whose available credit fell below their auto-recharge threshold")
    jobs.register("reconcile-payments", _reconcile, 300,
                  "settle purchases and refunds the gateway left open; detach forgotten cards")
    extensions.register_audit_check(_check_grants)  # every succeeded purchase granted exactly once


register()
