"""Account use cases: create (operator) and register (sign-up) a user with a wallet, verify the address, read and
change the profile, read the wallet, statement and call records, change an account's status."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from credits import clock, config, crypto, money
from credits.accounts.models import ROLES, STATUSES, EmailToken, User
from credits.accounts.passwords import check_policy, hash_password, verify_password
from credits.db import unit_of_work
from credits.errors import Conflict, DomainError, NotFound, ValidationError
from credits.ledger.service import LotView, StatementPage, WalletView, _open_wallet

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


# ---------------------------------------------------------------- sign-up (G49-G51, J61-J63)

U: Table = User.__table__  # type: ignore[assignment]
T: Table = EmailToken.__table__  # type: ignore[assignment]
MIN_AGE = 13
NAME_MAX = 200


class RegistrationRefused(DomainError):
    """Sign-up refused. The message is deliberately generic: it must not say why (an age rule invites a retry
    with another date of birth)."""

    status = 403
    code = "registration_refused"
    title = "We could not create an account"

    def __init__(self) -> None:
        super().__init__("Sorry, we could not create an account with the details given.")


class ReauthenticationFailed(DomainError):
    """A change that needs the current password (email, phone) came with a wrong one."""

    status = 403
    code = "reauthentication_failed"
    title = "The current password is incorrect"


@dataclass(frozen=True)
class RegistrationResult:
    #: None when the address already had an account: the answer looks the same, the owner gets an email.
    user_id: int | None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or not name.isprintable():
        raise ValidationError(f"a name is 1-{NAME_MAX} printable characters", field="name")
    return name.strip()


def check_country(country: object) -> str:
    import phonenumbers

    if not isinstance(country, str) or country.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError("country is an ISO 3166 two-letter code", field="country")
    return country.upper()


def check_date_of_birth(value: object) -> date:
    """A real calendar date between 1900-01-01 and today (ISO 8601 string or date)."""
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValidationError("date_of_birth is a date, YYYY-MM-DD", field="date_of_birth")
    if not date(1900, 1, 1) <= value <= clock.now().date():
        raise ValidationError("date_of_birth is not a possible date of birth", field="date_of_birth")
    return value


def age_on(born: date, today: date) -> int:
    """Completed years of age on `today`."""
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _verification_token(db: DbSession, user_id: int, purpose: str, data: str | None = None) -> tuple[str, datetime]:
    """A new single-use email token (256 bits, stored hashed); earlier unused ones of `purpose` are retired."""
    token = secrets.token_urlsafe(32)
    now = clock.now()
    expires = now + timedelta(hours=config.current().email_verify_hours)
    db.execute(update(T).where(T.c.user_id == user_id, T.c.purpose == purpose, T.c.used_at.is_(None))
               .values(used_at=now))
    token_id: int = db.execute(insert(T).values(user_id=user_id, purpose=purpose, token_hash=_token_hash(token),
                                           created_at=now, expires_at=expires).returning(T.c.id)).scalar_one()
    if data is not None:
        db.execute(update(T).where(T.c.id == token_id).values(
            data_enc=crypto.encrypt(data, "email_tokens", "data_enc", token_id)))
    return token, expires


def register(email: str, password: str, name: str, date_of_birth: object, country: str, *,
             ip: str | None = None) -> RegistrationResult:
    """Sign a customer up: user and wallet, personal fields encrypted, a verification email queued.

    Under 13 on today's date: RegistrationRefused with a generic message, and nothing is stored (G50; the web
    layer keeps only a non-identifying retry block in a signed cookie). An address that already has an account
    gets an "account_exists" email instead, and the caller sees the same answer (no account enumeration).
    Raises ValidationError (email, name, date_of_birth, country, password rules J61-J62), RegistrationRefused.
    """
    from credits.accounts import notices
    from credits.security import events

    email = normalise_email(email)
    name = check_name(name)
    born = check_date_of_birth(date_of_birth)
    country = check_country(country)
    if age_on(born, clock.now().date()) < MIN_AGE:
        raise RegistrationRefused()
    check_policy(password, user_inputs=[email, name])
    pw_hash = hash_password(password)
    now = clock.now()
    with unit_of_work() as uow:
        db = uow.session
        existing = db.execute(select(U.c.id).where(U.c.email_bidx == email_index(email))).scalar()
        if existing is not None:
            notices.send(db, existing, "account_exists", email, link=f"{notices.public_url()}/forgot-password")
            events.record(db, "register_existing_email", user_id=existing, ip=ip)
            uow.commit()
            return RegistrationResult(None)
        try:
            user_id: int = db.execute(
                insert(U).values(email_enc="", email_bidx=email_index(email), password_hash=pw_hash, role="customer",
                                 status="active", created_at=now, country=country).returning(U.c.id)
            ).scalar_one()
        except IntegrityError:  # a concurrent sign-up with the same address won
            return RegistrationResult(None)
        db.execute(update(U).where(U.c.id == user_id).values(
            email_enc=crypto.encrypt(email, "users", "email_enc", user_id),
            name_enc=crypto.encrypt(name, "users", "name_enc", user_id),
            dob_enc=crypto.encrypt(born.isoformat(), "users", "dob_enc", user_id)))
        _open_wallet(db, user_id, money.check_currency(config.current().default_currency), now)
        token, expires = _verification_token(db, user_id, "verify_email")
        notices.send(db, user_id, "verify_email", email, name, link=notices.link("/verify-email", token), token=token,
                     expires_at=expires)
        events.record(db, "registered", user_id=user_id, ip=ip)
        uow.commit()
        return RegistrationResult(user_id)


def verify_email(token: str, *, ip: str | None = None) -> str:
    """Use a link from a verification email: confirm the address, or complete an email change.

    Returns the purpose ("verify_email" or "change_email"). An email change notifies the old and the new address.
    Raises InvalidToken (unknown, used, expired, superseded), Conflict (the new address got an account meanwhile).
    """
    from credits.accounts import notices
    from credits.accounts.signin import InvalidToken
    from credits.security import events

    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        raise InvalidToken()
    now = clock.now()
    with unit_of_work() as uow:
        db = uow.session
        row = db.execute(select(T).where(T.c.token_hash == _token_hash(token),
                                         T.c.purpose.in_(("verify_email", "change_email"))).with_for_update()).first()
        if row is None or row.used_at is not None or row.expires_at <= now:
            raise InvalidToken()
        db.execute(update(T).where(T.c.id == row.id).values(used_at=now))
        if row.purpose == "verify_email":
            db.execute(update(U).where(U.c.id == row.user_id, U.c.email_verified_at.is_(None))
                       .values(email_verified_at=now))
            events.record(db, "email_verified", user_id=row.user_id, ip=ip)
        else:
            new = crypto.decrypt(row.data_enc, "email_tokens", "data_enc", row.id) or ""
            old, name = notices.contact(db, row.user_id)
            try:
                db.execute(update(U).where(U.c.id == row.user_id).values(
                    email_enc=crypto.encrypt(new, "users", "email_enc", row.user_id), email_bidx=email_index(new),
                    email_verified_at=now))
                db.flush()
            except IntegrityError as exc:
                raise Conflict("this address now belongs to another account") from exc
            events.record(db, "email_changed", user_id=row.user_id, ip=ip)
            for to, to_old in ((old, True), (new, False)):
                notices.send(db, row.user_id, "email_changed", to, name, old_email=old, new_email=new,
                             to_old_address=to_old)
        uow.commit()
        return str(row.purpose)


# ---------------------------------------------------------------- profile (DESIGN §5b: GET/PATCH /api/v1/me)


@dataclass(frozen=True)
class Profile:
    user_id: int
    email: str
    name: str | None
    date_of_birth: str | None
    country: str | None
    role: str
    status: str
    email_verified: bool
    mfa_enabled: bool
    phones: list[str]
    account_number: str | None
    currency: str | None
    created_at: datetime
    money_frozen: bool


@dataclass(frozen=True)
class ProfileUpdate:
    profile: Profile
    #: True when a confirmation link went to the new address; the change happens when it is followed.
    email_change_pending: bool


def _start_email_change(db: DbSession, user: Any, new_email: str, ip: str | None) -> bool:
    """Send a confirmation link to `new_email` (or, if another account has it, tell that account's owner
    and say nothing to the caller); return True when a change is under way."""
    from credits.accounts import notices
    from credits.security import events

    current = crypto.decrypt(user.email_enc, "users", "email_enc", user.id) or ""
    if new_email == current:
        return False
    name = crypto.decrypt(user.name_enc, "users", "name_enc", user.id) or ""
    taken = db.execute(select(U.c.id).where(U.c.email_bidx == email_index(new_email))).scalar()
    if taken is None:
        token, expires = _verification_token(db, user.id, "change_email", data=new_email)
        notices.send(db, user.id, "email_change_confirm", new_email, name, new_email=new_email, token=token,
                     link=notices.link("/verify-email", token), expires_at=expires)
    else:
        notices.send(db, taken, "account_exists", new_email, link=f"{notices.public_url()}/forgot-password")
    events.record(db, "email_change_requested", user_id=user.id, ip=ip)
    return True


def _profile(db: DbSession, user_id: int) -> Profile:
    from credits.calls.models import CallerNumber
    from credits.ledger.models import Wallet

    w: Table = Wallet.__table__  # type: ignore[assignment]
    cn: Table = CallerNumber.__table__  # type: ignore[assignment]
    row = db.execute(select(U).where(U.c.id == user_id)).first()
    if row is None:
        raise NotFound("no such account")
    wallet = db.execute(select(w.c.id, w.c.account_number, w.c.currency).where(w.c.user_id == user_id)).first()
    phones: list[str] = []
    if wallet is not None:
        numbers = db.execute(select(cn.c.id, cn.c.number_enc).where(cn.c.wallet_id == wallet.id)
                             .order_by(cn.c.id)).all()
        phones = [crypto.decrypt(n.number_enc, "caller_numbers", "number_enc", n.id) or "" for n in numbers]
    return Profile(
        user_id=row.id, email=crypto.decrypt(row.email_enc, "users", "email_enc", row.id) or "",
        name=crypto.decrypt(row.name_enc, "users", "name_enc", row.id),
        date_of_birth=crypto.decrypt(row.dob_enc, "users", "dob_enc", row.id), country=row.country, role=row.role,
        status=row.status, email_verified=row.email_verified_at is not None,
        mfa_enabled=row.mfa_enabled_at is not None, phones=phones,
        account_number=None if wallet is None else wallet.account_number,
        currency=None if wallet is None else wallet.currency, created_at=row.created_at,
        money_frozen=row.money_frozen_at is not None)


def get_profile(user_id: int) -> Profile:
    """The user's own profile, decrypted. Raises NotFound."""
    with unit_of_work() as uow:
        return _profile(uow.session, user_id)


PROFILE_FIELDS = frozenset({"name", "country", "email", "phone", "current_password"})


def update_profile(user_id: int, changes: Mapping[str, Any], *, ip: str | None = None) -> ProfileUpdate:
    """Change name and country; add a phone number (also a caller number for the switch, unique across accounts);
    start an email change (a confirmation link goes to the new address; followed, it notifies both addresses).

    Email and phone changes need `current_password` (re-authentication). All or nothing.
    Raises ValidationError, ReauthenticationFailed, Conflict (the number belongs to another account), NotFound.
    """
    from credits.calls.service import _register_number
    from credits.security import events

    unknown = set(changes) - PROFILE_FIELDS
    if unknown:
        raise ValidationError(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    values: dict[str, Any] = {}
    if "name" in changes:
        values["name"] = check_name(changes["name"])
    if "country" in changes:
        values["country"] = check_country(changes["country"])
    new_email = normalise_email(changes["email"]) if changes.get("email") is not None else None
    phone = changes.get("phone")
    if phone is not None and not isinstance(phone, str):
        raise ValidationError("phone is a string", field="phone")
    sensitive = new_email is not None or phone is not None
    if sensitive and not isinstance(changes.get("current_password"), str):
        raise ValidationError("changing the email address or phone number needs your current password",
                              field="current_password")
    now = clock.now()
    pending = False
    with unit_of_work() as uow:
        db = uow.session
        user = db.execute(select(U).where(U.c.id == user_id).with_for_update()).first()
        if user is None:
            raise NotFound("no such account")
        if sensitive and not verify_password(user.password_hash, changes["current_password"]):
            events.record(db, "reauthentication_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise ReauthenticationFailed()
        if "name" in values:
            db.execute(update(U).where(U.c.id == user_id).values(
                name_enc=crypto.encrypt(values["name"], "users", "name_enc", user_id)))
        if "country" in values:
            db.execute(update(U).where(U.c.id == user_id).values(country=values["country"]))
        if phone is not None:
            from credits.ledger.models import Wallet

            w: Table = Wallet.__table__  # type: ignore[assignment]
            wallet_id = db.execute(select(w.c.id).where(w.c.user_id == user_id)).scalar()
            if wallet_id is None:
                raise NotFound("no wallet")
            _register_number(db, wallet_id, phone, now)
            events.record(db, "phone_added", user_id=user_id, ip=ip)
        if new_email is not None:
            pending = _start_email_change(db, user, new_email, ip)
        if values:
            events.record(db, "profile_changed", user_id=user_id, ip=ip, detail=",".join(sorted(values)))
        profile = _profile(db, user_id)
        uow.commit()
        return ProfileUpdate(profile, pending)


# ---------------------------------------------------------------- the customer's own wallet, statement, calls


def _wallet_id(user_id: int) -> int:
    from credits.ledger.service import wallet_of_user

    return wallet_of_user(user_id).id


def my_wallet(user_id: int) -> tuple[WalletView, list[LotView]]:
    """The user's wallet (balance, available, currency, next expiry) and its lots with credit left, in draw order."""
    from credits.ledger import service as ledger

    wallet = ledger.wallet_of_user(user_id)
    return wallet, ledger.lots(wallet.id)


def my_statement(user_id: int, *, after: str | None = None, limit: int = 50) -> tuple[StatementPage, str]:
    """(page of the user's journal with running balances, currency). Raises ValidationError (cursor, limit)."""
    from credits.ledger import service as ledger

    wallet = ledger.wallet_of_user(user_id)
    return ledger.statement(wallet.id, after=after, limit=limit), wallet.currency


def my_calls(user_id: int, *, start: datetime | None = None, end: datetime | None = None, after: str | None = None,
             limit: int = 50) -> Any:
    """A page of the user's call records (credits.calls.service.CallPage). Raises ValidationError."""
    from credits.calls.service import call_history

    return call_history(_wallet_id(user_id), start=start, end=end, after=after, limit=limit)


def my_calls_csv(user_id: int, *, start: datetime | None = None, end: datetime | None = None) -> Iterator[str]:
    """The user's call records as CSV lines. Raises ValidationError (checked before the first line)."""
    from credits.calls.service import call_history, calls_csv

    wallet_id = _wallet_id(user_id)
    call_history(wallet_id, start=start, end=end, limit=1)  # validate now, not halfway through a stream
    return calls_csv(wallet_id, start=start, end=end)


# ---------------------------------------------------------------- G51: a child's account reported by staff


def close_underage(actor_id: int, user_id: int) -> None:
    """Close an account staff learnt belongs to a child under 13, and erase its personal data (G51).

    Not the legal-retention path: name, date of birth, country, password, MFA, sessions, tokens, recovery codes,
    queued emails and caller numbers are deleted; the address is replaced by a pseudonym (the column is unique
    and required); security events lose their network; call records keep amounts but not the numbers. The
    wallet and its journal stay (the ledger is append-only; money is settled separately). Audit-logged with
    no personal data. Raises NotFound.
    """
    from credits import audit
    from credits.accounts.models import RecoveryCode, Session
    from credits.calls.models import Call, CallerNumber
    from credits.ledger.models import Wallet
    from credits.notify.models import OutboxMessage
    from credits.security import events
    from credits.security.models import SecurityEvent

    def table(model: Any) -> Table:
        return model.__table__  # type: ignore[no-any-return]

    with unit_of_work() as uow:
        db = uow.session
        if db.execute(select(U.c.id).where(U.c.id == user_id).with_for_update()).scalar() is None:
            raise NotFound("no such account")
        pseudonym = f"erased-{user_id}@erased.invalid"
        db.execute(update(U).where(U.c.id == user_id).values(
            status="closed", email_enc=crypto.encrypt(pseudonym, "users", "email_enc", user_id),
            email_bidx=email_index(pseudonym), email_verified_at=None, name_enc=None, dob_enc=None, country=None,
            password_hash=None, mfa_secret_enc=None, mfa_enabled_at=None, mfa_last_step=None, last_login_at=None,
            reset_required=False))
        for model in (Session, RecoveryCode, EmailToken, OutboxMessage):
            t = table(model)
            db.execute(t.delete().where(t.c.user_id == user_id))
        se = table(SecurityEvent)
        db.execute(update(se).where(se.c.user_id == user_id).values(ip_prefix=None))
        wallets = select(table(Wallet).c.id).where(table(Wallet).c.user_id == user_id).scalar_subquery()
        cn, calls = table(CallerNumber), table(Call)
        db.execute(cn.delete().where(cn.c.wallet_id.in_(wallets)))
        db.execute(update(calls).where(calls.c.wallet_id.in_(wallets)).values(caller="erased", callee="erased"))
        audit.record(db, f"user:{actor_id}", "accounts.close_underage", f"user:{user_id}")
        events.record(db, "account_closed_underage", user_id=user_id)
        uow.commit()
