"""Accounts: users (personal fields encrypted, looked up by blind index), sessions, MFA, tokens, API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from credits.db import Base, BigInt, UTCDateTime

ROLES = ("customer", "support", "security_officer", "admin")
STATUSES = ("active", "frozen", "restricted", "closed")
STAFF_ROLES = ("support", "security_officer", "admin")
SESSION_KINDS = ("web", "api")
TOKEN_PURPOSES = ("verify_email", "reset_password", "compromise", "change_email", "pay_link")


class User(Base):
    """A person with an account. Email, name, date of birth and the MFA secret are encrypted per field
    (credits.crypto, associated data users.<column>.<id>); `email_bidx` is the blind index for lookups."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
        CheckConstraint(f"status IN {STATUSES!r}", name="status"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    email_enc: Mapped[str] = mapped_column(Text)
    email_bidx: Mapped[str] = mapped_column(String(64), unique=True)
    name_enc: Mapped[str | None] = mapped_column(Text)
    dob_enc: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(2))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(24), default="customer")
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mfa_secret_enc: Mapped[str | None] = mapped_column(Text)
    mfa_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Last accepted TOTP time step: a code is accepted once (replay guard).
    mfa_last_step: Mapped[int | None] = mapped_column(BigInteger)
    #: Set by a compromise report: the next sign-in must reset the password first.
    reset_required: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Money movement frozen (transfers, saved-card purchases, auto-recharge); calls go on.
    money_frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    money_frozen_reason: Mapped[str | None] = mapped_column(String(200))


class RecoveryCode(Base):
    """A single-use MFA recovery code (only its hash is stored)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Session(Base):
    """A server-side session (web cookie) or personal API token; the client holds a random token whose
    SHA-256 is `token_hash`."""

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint(f"kind IN {SESSION_KINDS!r}", name="kind"),
        Index("ix_sessions_user_id_revoked_at", "user_id", "revoked_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    absolute_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: False while a password-only sign-in still owes its second factor.
    mfa_ok: Mapped[bool] = mapped_column(Boolean, default=False)
    csrf_token: Mapped[str] = mapped_column(String(64))
    #: Truncated client address (/24 or /48) and browser, so the customer can recognise the session.
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(200))


class EmailToken(Base):
    """A single-use token sent by email (verify address, reset password, "this wasn't me", pay link)."""

    __tablename__ = "email_tokens"
    __table_args__ = (CheckConstraint(f"purpose IN {TOKEN_PURPOSES!r}", name="purpose"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(24))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Purpose-specific data, encrypted (e.g. the new address of an email change).
    data_enc: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    """A machine credential (the switch): only a SHA-256 of the key is stored, with its visible prefix."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scope IN ('switch')", name="scope"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    #: Comma-separated addresses or networks the key may be used from (None: anywhere).
    allowed_ips: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
