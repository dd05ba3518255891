"""Account, sign-in and session API schemas (marshmallow); unknown fields are rejected.

Passwords are plain strings: never stripped or case-folded (J61: verified exactly as typed).
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

EMAIL = validate.Length(min=3, max=320)
PASSWORD = validate.Length(min=1, max=1024)  # the rules (8..256) are the service's, with a helpful message
CODE = validate.Length(min=6, max=64)
TOKEN = validate.Length(min=16, max=128)


class RegisterIn(Schema):
    email = fields.String(required=True, validate=EMAIL)
    password = fields.String(required=True, validate=PASSWORD)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    date_of_birth = fields.String(required=True, validate=validate.Length(min=8, max=10),
                                  metadata={"description": "YYYY-MM-DD", "example": "1990-04-21"})
    country = fields.String(required=True, validate=validate.Length(equal=2),
                            metadata={"description": "ISO 3166-1 alpha-2"})


class MessageOut(Schema):
    message = fields.String()


class LoginIn(Schema):
    email = fields.String(required=True, validate=EMAIL)
    password = fields.String(required=True, validate=PASSWORD)
    totp = fields.String(validate=CODE, metadata={"description": "current TOTP code or a recovery code"})


class LoginOut(Schema):
    user_id = fields.Integer()
    role = fields.String()
    mfa_required = fields.Boolean(metadata={"description": "true: POST /api/v1/auth/mfa with the code next"})
    csrf_token = fields.String(metadata={"description": "send as X-CSRF-Token on unsafe cookie requests"})
    expires_at = fields.String()


class TokenOut(Schema):
    token = fields.String(metadata={"description": "personal API token: Authorization: Bearer <token>; shown once"})
    expires_at = fields.String()


class MfaIn(Schema):
    code = fields.String(required=True, validate=CODE)


class TokenIn(Schema):
    token = fields.String(required=True, validate=TOKEN)


class VerifyOut(Schema):
    purpose = fields.String()
    message = fields.String()


class ResetIn(Schema):
    email = fields.String(required=True, validate=EMAIL)


class ResetConfirmIn(Schema):
    token = fields.String(required=True, validate=TOKEN)
    password = fields.String(required=True, validate=PASSWORD)


class PasswordChangeIn(Schema):
    current_password = fields.String(required=True, validate=PASSWORD)
    new_password = fields.String(required=True, validate=PASSWORD)


class PasswordIn(Schema):
    password = fields.String(required=True, validate=PASSWORD)


class EnrolmentOut(Schema):
    secret = fields.String(metadata={"description": "base32 seed, for typing in by hand"})
    otpauth_uri = fields.String()
    qr_svg = fields.String(metadata={"description": "data: URI of an SVG QR code of otpauth_uri"})


class ActivationOut(Schema):
    recovery_codes = fields.List(fields.String(), metadata={"description": "10 single-use codes, shown once"})
    csrf_token = fields.String(allow_none=True)


class MfaDisableIn(Schema):
    password = fields.String(required=True, validate=PASSWORD)
    code = fields.String(required=True, validate=CODE)


class RecoveryCodesOut(Schema):
    recovery_codes = fields.List(fields.String())


class ProfileOut(Schema):
    id = fields.Integer()
    email = fields.String()
    name = fields.String(allow_none=True)
    date_of_birth = fields.String(allow_none=True)
    country = fields.String(allow_none=True)
    role = fields.String()
    status = fields.String()
    email_verified = fields.Boolean()
    mfa_enabled = fields.Boolean()
    phones = fields.List(fields.String())
    account_number = fields.String(allow_none=True)
    currency = fields.String(allow_none=True)
    created_at = fields.String()
    money_frozen = fields.Boolean()
    email_change_pending = fields.Boolean()
    csrf_token = fields.String(allow_none=True, metadata={"description": "only for cookie sessions"})


class ProfilePatchIn(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    country = fields.String(validate=validate.Length(equal=2))
    email = fields.String(validate=EMAIL, metadata={"description": "needs current_password; confirmed by email"})
    phone = fields.String(validate=validate.Length(min=3, max=32),
                          metadata={"description": "adds a caller number (E.164); needs current_password"})
    current_password = fields.String(validate=PASSWORD)


class LotOut(Schema):
    id = fields.Integer()
    source = fields.String()
    granted = fields.String()
    remaining = fields.String()
    expires_at = fields.String()
    created_at = fields.String()


class WalletOut(Schema):
    account_number = fields.String()
    currency = fields.String()
    balance = fields.String()
    held = fields.String()
    available = fields.String()
    next_expiry_at = fields.String(allow_none=True)
    lots = fields.List(fields.Nested(LotOut))


class PageQuery(Schema):
    after = fields.String(validate=validate.Length(min=1, max=20))
    limit = fields.Integer(validate=validate.Range(min=1, max=500), load_default=50)


class StatementLineOut(Schema):
    tx_id = fields.Integer()
    kind = fields.String()
    memo = fields.String()
    created_at = fields.String()
    amount = fields.String()
    balance_after = fields.String()


class StatementOut(Schema):
    currency = fields.String()
    lines = fields.List(fields.Nested(StatementLineOut))
    next = fields.String(allow_none=True, metadata={"description": "pass as ?after= for the next (older) page"})


class CallsQuery(PageQuery):
    start = fields.AwareDateTime(default_timezone=None)
    end = fields.AwareDateTime(default_timezone=None)
    format = fields.String(validate=validate.OneOf(["json", "csv"]), load_default="json")


class CallOut(Schema):
    id = fields.Integer()
    call_id = fields.String()
    caller = fields.String()
    callee = fields.String()
    destination = fields.String()
    status = fields.String()
    disposition = fields.String(allow_none=True)
    authorized_at = fields.String()
    answered_at = fields.String(allow_none=True)
    ended_at = fields.String(allow_none=True)
    duration_s = fields.Integer(allow_none=True)
    billed_s = fields.Integer(allow_none=True)
    rate_per_minute = fields.String()
    cost = fields.String(allow_none=True)
    charged = fields.String(allow_none=True)


class CallsOut(Schema):
    currency = fields.String()
    calls = fields.List(fields.Nested(CallOut))
    next = fields.String(allow_none=True)


class SessionOut(Schema):
    id = fields.Integer()
    kind = fields.String(metadata={"description": "web (browser) or api (personal token)"})
    current = fields.Boolean()
    created_at = fields.String()
    last_seen_at = fields.String()
    expires_at = fields.String()
    ip_prefix = fields.String(allow_none=True)
    user_agent = fields.String(allow_none=True)


class SessionsOut(Schema):
    sessions = fields.List(fields.Nested(SessionOut))


class RevokedOut(Schema):
    revoked = fields.Integer()


class TransferIn(Schema):
    to = fields.String(required=True, validate=validate.Length(min=1, max=320),
                       metadata={"description": "recipient's email address or account number"})
    amount = fields.String(required=True, validate=validate.Length(min=1, max=24),
                           metadata={"description": "decimal string in the wallet currency"})
    password = fields.String(validate=PASSWORD)
    totp = fields.String(validate=validate.Length(min=6, max=32))


class TransferOut(Schema):
    id = fields.Integer()
    from_account = fields.String()
    to_account = fields.String()
    amount = fields.String()
    currency = fields.String()
    balance = fields.String()
    available = fields.String()
    created_at = fields.String()
