"""Field encryption (AES-256-GCM with key ids and associated data), blind indexes, and key rotation.

Ciphertext format: ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``. The associated data binds each value
to its table, column and row (``users.email.42``), so a ciphertext copied into another row or column does not
decrypt. Blind indexes are HMAC-SHA256 of a normalised value under a separate key, for equality lookups.
Keys come from CREDITS_ENCRYPTION_KEYS (``id:base64,...``; the first encrypts, all decrypt) and
CREDITS_BLIND_INDEX_KEY; development and test fall back to fixed keys, production refuses to start without.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from credits import config
from credits.errors import ConfigError, CreditsError

VERSION = "v1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_DEV_KEY_ID = "dev"


class DecryptionError(CreditsError):
    """A stored value could not be decrypted (wrong key, tampered, or moved to another row)."""

    code = "decryption_error"
    title = "Stored data could not be read"


@dataclass(frozen=True)
class Keyring:
    primary: str
    keys: dict[str, bytes]
    blind_key: bytes

    @classmethod
    def from_config(cls, cfg: config.Config) -> Keyring:
        """Parse the settings; raise ConfigError on a malformed key list."""
        keys: dict[str, bytes] = {}
        primary = ""
        if cfg.encryption_keys:
            for part in cfg.encryption_keys.split(","):
                key_id, _, b64 = part.strip().partition(":")
                if not _KEY_ID.match(key_id):
                    raise ConfigError("CREDITS_ENCRYPTION_KEYS: key ids are 1-16 letters, digits, _ or -")
                try:
                    raw = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ConfigError(f"CREDITS_ENCRYPTION_KEYS: key {key_id} is not base64") from exc
                if len(raw) != 32:
                    raise ConfigError(f"CREDITS_ENCRYPTION_KEYS: key {key_id} must be 32 bytes")
                if key_id in keys:
                    raise ConfigError(f"CREDITS_ENCRYPTION_KEYS: key id {key_id} appears twice")
                keys[key_id] = raw
                primary = primary or key_id
        elif cfg.is_production:
            raise ConfigError("CREDITS_ENCRYPTION_KEYS must be set in production")
        else:
            primary = _DEV_KEY_ID
            keys[_DEV_KEY_ID] = hashlib.sha256(b"credits development encryption key").digest()
        if cfg.blind_index_key:
            blind = base64.b64decode(cfg.blind_index_key)
        elif cfg.is_production:
            raise ConfigError("CREDITS_BLIND_INDEX_KEY must be set in production")
        else:
            blind = hashlib.sha256(b"credits development blind index key").digest()
        return cls(primary, keys, blind)


_lock = threading.Lock()
_cache: tuple[config.Config, Keyring] | None = None


def keyring() -> Keyring:
    """The keyring of the installed settings (parsed once per settings object)."""
    global _cache
    cfg = config.current()
    cached = _cache
    if cached is not None and cached[0] is cfg:
        return cached[1]
    with _lock:
        ring = Keyring.from_config(cfg)
        _cache = (cfg, ring)
        return ring


def associated_data(table: str, column: str, row_id: object) -> bytes:
    return f"{table}.{column}.{row_id}".encode()


def encrypt(plaintext: str | None, table: str, column: str, row_id: object) -> str | None:
    """Encrypt `plaintext` for one cell; None stays None."""
    if plaintext is None:
        return None
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # imported when a value is first sealed

    ring = keyring()
    nonce = os.urandom(12)
    sealed = AESGCM(ring.keys[ring.primary]).encrypt(nonce, plaintext.encode(), associated_data(table, column, row_id))
    return f"{VERSION}.{ring.primary}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def key_id_of(ciphertext: str) -> str:
    version, key_id, _ = ciphertext.split(".", 2)
    if version != VERSION:
        raise DecryptionError("unknown ciphertext version")
    return key_id


def decrypt(ciphertext: str | None, table: str, column: str, row_id: object) -> str | None:
    """Decrypt one cell encrypted by `encrypt` for the same table, column and row; None stays None.

    Raises DecryptionError for an unknown key id, a tampered value, or a value from another cell.
    """
    if ciphertext is None:
        return None
    try:
        version, key_id, b64 = ciphertext.split(".", 2)
        blob = base64.urlsafe_b64decode(b64)
    except (ValueError, binascii.Error) as exc:
        raise DecryptionError("malformed ciphertext") from exc
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    ring = keyring()
    if version != VERSION or key_id not in ring.keys:
        raise DecryptionError("ciphertext under an unknown key")
    try:
        plain = AESGCM(ring.keys[key_id]).decrypt(blob[:12], blob[12:], associated_data(table, column, row_id))
    except InvalidTag as exc:
        raise DecryptionError("ciphertext does not authenticate for this cell") from exc
    return plain.decode()


def blind_index(domain: str, value: str) -> str:
    """HMAC-SHA256 of a normalised value under the blind-index key, as hex, for equality lookups."""
    return hmac.new(keyring().blind_key, f"{domain}:{value}".encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- rotation


@dataclass(frozen=True)
class EncryptedColumn:
    table: str
    column: str
    pk: str = "id"


#: Every encrypted column; features add theirs at import (see credits/models.py).
ENCRYPTED_COLUMNS: list[EncryptedColumn] = []


def register(table: str, *columns: str, pk: str = "id") -> None:
    for column in columns:
        entry = EncryptedColumn(table, column, pk)
        if entry not in ENCRYPTED_COLUMNS:
            ENCRYPTED_COLUMNS.append(entry)


@dataclass
class RotationProgress:
    table: str
    column: str
    done: int
    remaining: int


def rotate(batch: int = 500, on_progress: Callable[[RotationProgress], None] | None = None) -> dict[str, int]:
    """Re-encrypt every value not under the primary key, in committed batches (resumable: run it again).

    Returns the number of values re-encrypted per "table.column".
    """
    from sqlalchemy import text

    from credits.db import unit_of_work

    ring = keyring()
    # Key ids may hold "_", a LIKE wildcard: escape it so that only the primary's own prefix matches.
    marker = f"{VERSION}.{ring.primary}.".replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
    counts: dict[str, int] = {}
    for col in ENCRYPTED_COLUMNS:
        done = 0
        while True:
            with unit_of_work() as uow:
                rows = uow.session.execute(text(
                    f"SELECT {col.pk}, {col.column} FROM {col.table} "  # noqa: S608 - names from our registry
                    f"WHERE {col.column} IS NOT NULL AND {col.column} NOT LIKE :marker ESCAPE '\\' "
                    f"ORDER BY {col.pk} LIMIT :n"
                ), {"marker": marker, "n": batch}).all()
                if not rows:
                    break
                for row_id, value in rows:
                    fresh = encrypt(decrypt(str(value), col.table, col.column, row_id), col.table, col.column, row_id)
                    uow.session.execute(text(
                        f"UPDATE {col.table} SET {col.column} = :v WHERE {col.pk} = :id"  # noqa: S608
                    ), {"v": fresh, "id": row_id})
                remaining: int = uow.session.execute(text(
                    f"SELECT count(*) FROM {col.table} WHERE {col.column} IS NOT NULL "  # noqa: S608
                    f"AND {col.column} NOT LIKE :marker ESCAPE '\\'"
                ), {"marker": marker}).scalar_one()
                uow.commit()
            done += len(rows)
            if on_progress:
                on_progress(RotationProgress(col.table, col.column, done, int(remaining)))
        counts[f"{col.table}.{col.column}"] = done
    return counts


@dataclass
class Census:
    """What `check()` found: values per key id, and the cells that do not decrypt ("table.column.id")."""

    by_key: dict[str, int]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def check(batch: int = 1000) -> Census:
    """Decrypt every encrypted value with the configured keys; count values per key id, list failures.

    Run it before removing a retired key: the key is safe to drop once it counts no value.
    """
    from sqlalchemy import text

    from credits.db import unit_of_work

    by_key: dict[str, int] = {}
    failures: list[str] = []
    for col in ENCRYPTED_COLUMNS:
        last: object = None
        while True:
            with unit_of_work() as uow:
                after = "" if last is None else f"AND {col.pk} > :last "
                rows = uow.session.execute(text(
                    f"SELECT {col.pk}, {col.column} FROM {col.table} "  # noqa: S608 - names from our registry
                    f"WHERE {col.column} IS NOT NULL {after}ORDER BY {col.pk} LIMIT :n"
                ), {"last": last, "n": batch}).all()
            if not rows:
                break
            for row_id, value in rows:
                try:
                    decrypt(str(value), col.table, col.column, row_id)
                    key_id = key_id_of(str(value))
                    by_key[key_id] = by_key.get(key_id, 0) + 1
                except (DecryptionError, ValueError):
                    failures.append(f"{col.table}.{col.column}.{row_id}")
            last = rows[-1][0]
    return Census(by_key, failures)


def iter_columns() -> Iterator[EncryptedColumn]:
    yield from ENCRYPTED_COLUMNS
