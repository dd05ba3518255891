"""API keys for machines (the switch): create (shown once), revoke, authenticate with an optional IP allowlist."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, select, update

from credits import clock, db
from credits.accounts.models import ApiKey
from credits.db import insert_for, unit_of_work
from credits.errors import Conflict, NotFound, Unauthorized, ValidationError

K: Table = ApiKey.__table__  # type: ignore[assignment]
SCOPES = ("switch",)
KEY_PREFIX = "csk_"
#: last_used_at is written at most this often per key, so that a busy switch does not write on every call.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class ApiKeyView:
    id: int
    name: str
    prefix: str
    scope: str
    allowed_ips: str | None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class CreatedKey:
    view: ApiKeyView
    #: The only time the full key exists outside the caller: print it once, never store or log it.
    secret: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_networks(allowed_ips: str | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if not allowed_ips:
        return []
    networks = []
    for part in allowed_ips.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValidationError(f"not an IP address or network: {part}", field="allowed_ips") from exc
    return networks


def create_key(name: str, scope: str = "switch", allowed_ips: str | None = None) -> CreatedKey:
    """Create a key; return it with its secret (shown once). Raises ValidationError on name, scope or IPs."""
    name = (name or "").strip()
    if not 1 <= len(name) <= 64:
        raise ValidationError("a key name is 1-64 characters", field="name")
    if scope not in SCOPES:
        raise ValidationError(f"scope is one of {', '.join(SCOPES)}", field="scope")
    nets = _parse_networks(allowed_ips)
    normalised = ",".join(str(n) for n in nets) or None
    for _ in range(5):
        # The visible prefix is 32 random bits and unique: on the rare collision, draw another key.
        prefix = KEY_PREFIX + secrets.token_hex(4)
        secret = f"{prefix}_{secrets.token_urlsafe(32)}"
        with unit_of_work() as uow:
            key_id: int | None = uow.session.execute(
                insert_for(uow.dialect)(K).values(name=name, prefix=prefix, key_hash=_digest(secret), scope=scope,
                                                  allowed_ips=normalised, created_at=clock.now())
                .on_conflict_do_nothing(index_elements=["prefix"]).returning(K.c.id)
            ).scalar()
            if key_id is not None:
                uow.commit()
                return CreatedKey(ApiKeyView(key_id, name, prefix, scope, normalised), secret)
    raise Conflict("could not allocate a key prefix; try again")  # pragma: no cover - 2^-32 five times


def revoke_key(name_or_prefix: str) -> int:
    """Revoke every live key with this name or prefix; return how many. Raises NotFound if none."""
    with unit_of_work() as uow:
        count = uow.session.execute(
            update(K).where((K.c.name == name_or_prefix) | (K.c.prefix == name_or_prefix), K.c.revoked_at.is_(None))
            .values(revoked_at=clock.now())
        ).rowcount  # type: ignore[attr-defined]
        if not count:
            raise NotFound("no live key with that name or prefix")
        uow.commit()
        return int(count)


def list_keys() -> list[tuple[ApiKeyView, bool]]:
    """Every key and whether it is live (secrets are never shown again)."""
    with unit_of_work() as uow:
        rows = uow.session.execute(select(K).order_by(K.c.id)).all()
        return [(ApiKeyView(r.id, r.name, r.prefix, r.scope, r.allowed_ips), r.revoked_at is None) for r in rows]


def authenticate(presented: str | None, scope: str, remote_addr: str | None) -> ApiKeyView:
    """Return the live key matching `presented` for `scope`, used from an allowed address; write nothing.

    Raises Unauthorized (no detail) for a missing, malformed, unknown, revoked or out-of-scope key or a
    disallowed address. The caller records the use with `record_use` once the request has been served, so
    that a request refused as malformed leaves the database exactly as it was.
    """
    return _verify(_key_row(_prefix_of(presented)), presented or "", scope, remote_addr)


def precheck(presented: str | None, scope: str, remote_addr: str | None) -> db.Precheck:
    """`authenticate` as a db.Precheck: a fast path reads the key with its first statement (one round trip
    fewer per switch request) and the result is the ApiKeyView. Raises Unauthorized at once for a missing or
    malformed key."""
    prefix = _prefix_of(presented)
    secret = presented or ""

    def judge(value: Any) -> ApiKeyView:
        row = value if value is None or isinstance(value, _KeyRow) else _key_row_from_json(value)
        return _verify(row, secret, scope, remote_addr)

    return db.Precheck(_KEY_COLUMN, {"pc_key_prefix": prefix}, judge, lambda: _key_row(prefix))


def _prefix_of(presented: str | None) -> str:
    if not presented or not presented.startswith(KEY_PREFIX) or len(presented) > 128:
        raise Unauthorized()
    return presented[: len(KEY_PREFIX) + 8]


def _verify(row: _KeyRow | None, presented: str, scope: str, remote_addr: str | None) -> ApiKeyView:
    if row is None or not hmac.compare_digest(row.key_hash, _digest(presented)):
        raise Unauthorized()
    if row.revoked_at is not None or row.scope != scope:
        raise Unauthorized()
    if row.allowed_ips:
        try:
            addr = ipaddress.ip_address(remote_addr or "")
        except ValueError as exc:
            raise Unauthorized() from exc
        if not any(addr in net for net in _parse_networks(row.allowed_ips)):
            raise Unauthorized()
    return ApiKeyView(row.id, row.name, row.prefix, row.scope, row.allowed_ips, row.last_used_at)


@dataclass(frozen=True)
class _KeyRow:
    id: int
    name: str
    prefix: str
    key_hash: str
    scope: str
    allowed_ips: str | None
    revoked_at: datetime | None
    last_used_at: datetime | None


_KEY_COLUMNS = ("id", "name", "prefix", "key_hash", "scope", "allowed_ips", "revoked_at", "last_used_at")
#: The key row as a JSON array, a scalar subquery for a fast path's first read (see `precheck`).
_KEY_COLUMN = (f"(SELECT json_build_array({', '.join(_KEY_COLUMNS)}) FROM api_keys "  # noqa: S608 - fixed
               "WHERE prefix = %(pc_key_prefix)s)")
_KEY_BY_PREFIX = f"SELECT {', '.join(_KEY_COLUMNS)} FROM api_keys WHERE prefix = %(prefix)s"  # noqa: S608 - fixed


def _key_row_from_json(values: list[Any]) -> _KeyRow:
    row = dict(zip(_KEY_COLUMNS, values, strict=True))
    for name in ("revoked_at", "last_used_at"):
        if row[name] is not None:
            row[name] = clock.utc(datetime.fromisoformat(row[name]))
    return _KeyRow(**row)


def _key_row(prefix: str) -> _KeyRow | None:
    """The key row with `prefix`, read fresh on every request (a revoked key stops working at once). On
    PostgreSQL one autocommitted statement on a raw connection: it runs before every switch request."""
    database = db.get()
    if database.dialect == "postgresql":
        with db.raw_transaction(database, autocommit=True) as tx:
            found = tx.execute(_KEY_BY_PREFIX, {"prefix": prefix}).fetchone()
        return _KeyRow(*found) if found is not None else None
    with unit_of_work() as uow:
        row = uow.session.execute(select(*(K.c[name] for name in _KEY_COLUMNS)).where(K.c.prefix == prefix)).first()
        return _KeyRow(**row._asdict()) if row is not None else None


def record_use(key: ApiKeyView) -> None:
    """Record that `key` was used now: written at most once a minute per key (a busy switch would otherwise
    write the key row on every call, and every request would queue on that one row)."""
    now = clock.now()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    with unit_of_work() as uow:
        uow.session.execute(
            update(K).where(K.c.id == key.id,
                            K.c.last_used_at.is_(None) | (K.c.last_used_at <= now - LAST_USED_RESOLUTION))
            .values(last_used_at=now)
        )
        uow.commit()
