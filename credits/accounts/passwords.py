"""Password hashing with argon2id; cheap parameters under the test configuration."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from credits import config

_hashers: dict[bool, PasswordHasher] = {}


def hasher() -> PasswordHasher:
    cheap = config.current().env == "test"
    if cheap not in _hashers:
        _hashers[cheap] = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1) if cheap else PasswordHasher()
    return _hashers[cheap]


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    if not stored:
        return False
    try:
        return hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
