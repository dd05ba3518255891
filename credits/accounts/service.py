"""Account use cases available so far: create a user with a wallet, change an account's status."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from credits import clock, config, crypto, money
from credits.accounts.models import ROLES, STATUSES, User
from credits.accounts.passwords import hash_password
from credits.db import unit_of_work
from credits.errors import Conflict, NotFound, ValidationError
from credits.ledger.service import WalletView, _open_wallet

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")


@dataclass(frozen=True)
class AccountView:
    user_id: int
    email: str
    role: str
    status: str
    wallet: WalletView


def normalise_email(email: str) -> str:
    if not isinstance(email, str) or not EMAIL.match(email.strip()) or len(email) > 320:
        raise ValidationError("not a valid email address", field="email")
    return email.strip().lower()


def email_index(email: str) -> str:
    """The blind index of a (normalised) email address: how accounts are found by email."""
    return crypto.blind_index("email", normalise_email(email))


def create_account(email: str, password: str, *, role: str = "customer", currency: str | None = None,
                   phone: str | None = None, plan: str | None = None) -> AccountView:
    """Create a user and their wallet in one transaction, optionally with a caller number and a rate plan.

    Raises ValidationError (email, password shorter than 8 characters, role, currency, phone, plan
    currency), NotFound (plan) and Conflict when the email or phone number is taken.
    """
    email = normalise_email(email)
    if not isinstance(password, str) or len(password) < 8:
        raise ValidationError("a password has at least 8 characters", field="password")
    if role not in ROLES:
        raise ValidationError(f"role is one of {', '.join(ROLES)}", field="role")
    currency = money.check_currency(currency or config.current().default_currency)
    pw_hash = hash_password(password)
    now = clock.now()
    with unit_of_work() as uow:
        try:
            user_id: int = uow.session.execute(
                insert(User).values(email_enc="", email_bidx=email_index(email), password_hash=pw_hash, role=role,
                                    status="active", created_at=now)
                .returning(User.id)
            ).scalar_one()
        except IntegrityError as exc:
            raise Conflict("an account with this email already exists") from exc
        uow.session.execute(update(User).where(User.id == user_id).values(
            email_enc=crypto.encrypt(email, "users", "email_enc", user_id)))
        wallet = _open_wallet(uow.session, user_id, currency, now)
        if phone:
            from credits.calls.service import _register_number

            _register_number(uow.session, wallet.id, phone, now)
        if plan:
            from credits.rating.service import _assign

            _assign(uow.session, wallet.id, plan)
        uow.commit()
        return AccountView(user_id, email, role, "active", wallet)


def set_status(user_id: int, status: str) -> None:
    """Set an account's status (active, frozen, restricted, closed). Raises ValidationError, NotFound."""
    if status not in STATUSES:
        raise ValidationError(f"status is one of {', '.join(STATUSES)}", field="status")
    with unit_of_work() as uow:
        found = uow.session.execute(select(User.id).where(User.id == user_id)).scalar()
        if found is None:
            raise NotFound("no such account")
        uow.session.execute(update(User).where(User.id == user_id).values(status=status))
        uow.commit()
