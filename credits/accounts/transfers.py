"""Customer credit transfers: re-authenticate, move the credit, tell both parties (one transaction)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table, select

from credits import clock, money
from credits.accounts import mfa
from credits.accounts.models import User
from credits.accounts.passwords import verify_password
from credits.accounts.service import ReauthenticationFailed
from credits.db import unit_of_work
from credits.errors import NotFound, ValidationError
from credits.ledger.models import Wallet
from credits.ledger.service import TransferView, _transfer
from credits.notify.notices import security_notice
from credits.security import events

U: Table = User.__table__  # type: ignore[assignment]
W: Table = Wallet.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class TransferResult:
    transfer: TransferView
    currency: str
    balance: int
    available: int


def send(user_id: int, to: str, amount: str, *, password: str | None = None, totp: str | None = None,
         key: str | None = None, ip: str | None = None) -> TransferResult:
    """Transfer `amount` (a decimal string in the wallet currency) to the account named by email or number.

    The customer re-authenticates with the password or a second-factor code (required when MFA is on, in
    place of the password). Both parties get a security notice; the sender's has the "this wasn't me" link.
    With `key` (the client's Idempotency-Key) a replay returns the first transfer and moves nothing.
    Raises ReauthenticationFailed, ValidationError, NotFound, LimitExceeded, InsufficientCredit,
    AccountNotActive / MoneyFrozen.
    """
    if not isinstance(to, str) or not 1 <= len(to.strip()) <= 320:
        raise ValidationError("to is the recipient's email address or account number", field="to")
    if password is None and totp is None:
        raise ValidationError("confirm the transfer with your password or an authentication code", field="password")
    now = clock.now()
    with unit_of_work() as uow:
        db = uow.session
        user = db.execute(select(U).where(U.c.id == user_id).with_for_update()).first()
        wallet = db.execute(select(W).where(W.c.user_id == user_id)).first()
        if user is None or wallet is None:
            raise NotFound("no wallet")
        micro = money.parse_amount(amount, wallet.currency)
        if user.mfa_enabled_at is not None:
            confirmed = mfa.verify_second_factor(db, user, totp) is not None
        else:
            confirmed = isinstance(password, str) and verify_password(user.password_hash, password)
        if not confirmed:
            events.record(db, "transfer_reauthentication_failed", user_id=user_id, ip=ip)
            uow.commit()
            raise ReauthenticationFailed()
        view = _transfer(db, wallet.id, to.strip(), micro, now, key=key, actor=f"user:{user_id}")
        if view.created:
            shown = money.format_micro(micro)
            security_notice(db, user_id, "transfer_sent", at=now.isoformat(), amount=shown,
                            currency=wallet.currency, to_account=view.to_account)
            recipient: int = db.execute(select(W.c.user_id).where(W.c.id == view.to_wallet_id)).scalar_one()
            security_notice(db, recipient, "transfer_received", at=now.isoformat(), amount=shown,
                            currency=wallet.currency, from_account=view.from_account)
            events.record(db, "transfer_sent", user_id=user_id, ip=ip, detail=f"transfer {view.id}")
        after = db.execute(select(W.c.balance, W.c.held).where(W.c.id == wallet.id)).one()
        uow.commit()
        return TransferResult(view, wallet.currency, after.balance, after.balance - after.held)


