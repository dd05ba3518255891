"""Security events as rows (CHECKLIST O101): sign-ins, failures, MFA and password changes, reports."""

from __future__ import annotations

import ipaddress

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from credits import clock
from credits.logging import current_request_id
from credits.security.models import SecurityEvent

E: Table = SecurityEvent.__table__  # type: ignore[assignment]


def ip_prefix(address: str | None) -> str | None:
    """The client's network, not its address: /24 for IPv4, /48 for IPv6 (enough to recognise, not to track)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def record(session: Session, kind: str, *, user_id: int | None = None, ip: str | None = None,
           detail: str = "") -> None:
    """Append a security event in the caller's transaction. `detail` must hold no secrets or personal data.

    The id of the request being served (credits.logging) is added to `detail` as `request=<id>`, so that an
    event can be matched with the log lines and the answer the client got (CHECKLIST O101).
    """
    request_id = current_request_id()
    if request_id and "request=" not in detail:
        suffix = f"request={request_id}"
        detail = f"{detail[:500 - len(suffix) - 1]} {suffix}" if detail else suffix
    session.execute(insert(E).values(user_id=user_id, kind=kind[:48], at=clock.now(), ip_prefix=ip_prefix(ip),
                                     detail=detail[:500]))
