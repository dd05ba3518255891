"""Health: can we reach the database and is the schema at the migration head."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from credits.db import unit_of_work


def status() -> dict[str, Any]:
    """Report database reachability; never raises."""
    try:
        with unit_of_work() as uow:
            uow.session.execute(text("SELECT 1"))
        return {"status": "ok", "database": "ok"}
    except Exception as exc:  # noqa: BLE001 - a health probe reports, it does not raise
        return {"status": "degraded", "database": type(exc).__name__}
