"""Passwords: the ASVS rules (length, common/breached list, zxcvbn with the user's own details) and argon2id.

Rules (CHECKLIST J61-J63): 8 to 256 characters, any characters (spaces, Unicode), no composition rules, kept and
verified exactly as typed (no trimming, no case folding, no normalisation). Refused: a password on the shipped
common/breached list (credits/accounts/data/common-passwords.txt), one that contains the brand or the user's
email, name or phone number, and one that zxcvbn scores below 2 (scored on the first 72 characters: zxcvbn
refuses longer input). Hashing: argon2id with argon2-cffi's defaults (t=3, 64 MiB, p=4: above the ASVS / OWASP
minimum of t=2, 19 MiB, p=1) in production and development; cheap parameters under the test configuration.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from credits import config
from credits.errors import ValidationError

MIN_LENGTH = 8
MAX_LENGTH = 256
ZXCVBN_MAX = 72
MIN_SCORE = 2  # 10^8 guesses: a random 8-character password passes; "aaaaaaaaaaaa" does not
#: Words of the operator's brand: a password built on them is among the first an attacker tries.
BRAND_WORDS = ("credits", "prepaid", "voipcredit")
COMMON_LIST = Path(__file__).parent / "data" / "common-passwords.txt"

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


def needs_rehash(stored: str) -> bool:
    """True when `stored` was made with other parameters than the current ones (J64: rehash on login)."""
    try:
        return hasher().check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


@functools.cache
def _dummy_hash(cheap: bool) -> str:
    return hasher().hash("not a password anyone has: dummy for timing")


def verify_dummy(password: str) -> None:
    """Spend the time of a real verification (unknown user): the answer's timing must not say who exists (J65)."""
    verify_password(_dummy_hash(config.current().env == "test"), password)


@functools.cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def _context_words(user_inputs: Iterable[str | None]) -> list[str]:
    words: list[str] = []
    for value in user_inputs:
        if not value:
            continue
        value = value.lower()
        words.append(value)
        if "@" in value:
            local, _, domain = value.partition("@")
            words += [local, domain.split(".")[0]]
        words += [part for part in re.split(r"[\s._+@-]+", value) if part]
        digits = re.sub(r"\D", "", value)
        if len(digits) >= 6:
            words += [digits, digits[-8:]]
    return sorted({w for w in words if len(w) >= 4}, key=len, reverse=True)


def check_policy(password: object, *, user_inputs: Iterable[str | None] = ()) -> str:
    """Return `password` unchanged when it meets the rules; raise ValidationError (field password) saying why.

    `user_inputs`: the user's email, name, phone numbers; each (and its parts) may not appear in the password.
    """
    if not isinstance(password, str):
        raise ValidationError("a password is a string", field="password")
    if len(password) < MIN_LENGTH:
        raise ValidationError(f"Use at least {MIN_LENGTH} characters.", field="password")
    if len(password) > MAX_LENGTH:
        raise ValidationError(f"Use at most {MAX_LENGTH} characters.", field="password")
    lowered = password.lower()
    if lowered in common_passwords():
        raise ValidationError("This password is on a list of common or breached passwords; choose another.",
                              field="password")
    for word in BRAND_WORDS:
        if word in lowered:
            raise ValidationError("Leave our name out of your password: it is among the first guesses.",
                                  field="password")
    inputs = list(user_inputs)
    for word in _context_words(inputs):
        if word in lowered:
            raise ValidationError("Leave your email address, name and phone number out of your password.",
                                  field="password")
    from zxcvbn import zxcvbn

    result = zxcvbn(password[:ZXCVBN_MAX], user_inputs=[v for v in [*inputs, *BRAND_WORDS] if v])
    if result["score"] < MIN_SCORE:
        feedback = result.get("feedback") or {}
        hint = feedback.get("warning") or ""
        suggestions = " ".join(feedback.get("suggestions") or [])
        message = "This password is too easy to guess. " + " ".join(p for p in (hint, suggestions) if p)
        message += " A few unrelated words make a strong password that is easy to remember."
        raise ValidationError(re.sub(r"\s+", " ", message).strip(), field="password")
    return password
