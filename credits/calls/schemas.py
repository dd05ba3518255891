"""Switch API request and response schemas (marshmallow); unknown fields are rejected."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from credits.calls.models import DISPOSITIONS, REFUSALS

NUMBER = validate.Regexp(r"^\+?[0-9]{1,20}$", error="a number is 1-20 digits with an optional leading +")
CALL_ID = [validate.Length(min=1, max=128), validate.Regexp(r"^[\x20-\x7e]+$", error="printable characters only")]
ACCOUNT = validate.Regexp(r"^[0-9]{1,16}$", error="an account number is digits")
SECONDS = validate.Range(min=0, max=86400)


def _caller_or_account(data: dict[str, Any]) -> None:
    if data.get("caller") is None and data.get("account") is None:
        raise ValidationError("give the caller number or the account", field_name="caller")


class AuthorizeIn(Schema):
    call_id = fields.String(required=True, validate=CALL_ID)
    caller = fields.String(validate=NUMBER, metadata={"description": "required unless account is given"})
    callee = fields.String(required=True, validate=NUMBER)
    account = fields.String(validate=ACCOUNT, metadata={"description": "account number; wins over caller"})

    @validates_schema
    def _who(self, data: dict[str, Any], **_kw: Any) -> None:
        _caller_or_account(data)


class RateOut(Schema):
    prefix = fields.String()
    destination = fields.String()
    rate_per_minute = fields.String(metadata={"description": "decimal string per minute"})
    connect_fee = fields.String()
    first_increment_s = fields.Integer()
    next_increment_s = fields.Integer()


class AuthorizeOut(Schema):
    call_id = fields.String()
    authorized = fields.Boolean()
    max_duration_s = fields.Integer()
    reserved = fields.String()
    currency = fields.String()
    rate = fields.Nested(RateOut)
    balance = fields.String()
    available = fields.String()
    reason = fields.String(validate=validate.OneOf(REFUSALS))


class UpdateIn(Schema):
    elapsed_s = fields.Integer(required=True, strict=True, validate=SECONDS)


class UpdateOut(Schema):
    authorized = fields.Boolean()
    max_duration_s = fields.Integer()


class CompleteIn(Schema):
    duration_s = fields.Integer(required=True, strict=True, validate=SECONDS)
    disposition = fields.String(required=True, validate=validate.OneOf(DISPOSITIONS))
    answered_at = fields.String(validate=validate.Length(max=40), allow_none=True)
    ended_at = fields.String(validate=validate.Length(max=40), allow_none=True)
    end_reason = fields.String(validate=validate.Length(max=32), allow_none=True)


class CompleteOut(Schema):
    call_id = fields.String()
    charged = fields.String()
    billed_duration_s = fields.Integer()
    balance = fields.String()


class CdrIn(Schema):
    """One CDR: its documented shape, the component "Cdr" (credits.web.api). Never loaded: the service checks each
    item on its own (calls.service._parse_cdr), so that one bad item is rejected alone."""

    call_id = fields.String(required=True, validate=CALL_ID)
    caller = fields.String(validate=NUMBER, metadata={"description": "required unless account is given"})
    callee = fields.String(required=True, validate=NUMBER)
    duration_s = fields.Integer(required=True, strict=True, validate=SECONDS)
    answered_at = fields.String(required=True, validate=validate.Length(max=40),
                                metadata={"description": "ISO-8601 time with a timezone"})
    disposition = fields.String(validate=validate.OneOf(DISPOSITIONS), metadata={"description": "default answered"})
    account = fields.String(validate=ACCOUNT, metadata={"description": "account number; wins over caller"})


class CdrsIn(Schema):
    # Items are Raw, not Nested(CdrIn): a bad item must not refuse the batch. The document still names their
    # shape (a bare "items" in the metadata was overwritten by the Raw field's empty schema).
    cdrs = fields.List(fields.Raw(metadata={"allOf": [{"$ref": "#/components/schemas/Cdr"}]}), required=True,
                       validate=validate.Length(min=1, max=1000))


class CdrResultOut(Schema):
    call_id = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf(["charged", "duplicate", "rejected"]))
    charged = fields.String()
    error = fields.String(allow_none=True)


class CdrsOut(Schema):
    results = fields.List(fields.Nested(CdrResultOut))


class WhoQuery(Schema):
    caller = fields.String(validate=NUMBER)
    account = fields.String(validate=ACCOUNT)

    @pre_load
    def _restore_plus(self, data: Any, **_kw: Any) -> Any:
        # "?caller=+6561234567" written by hand decodes to " 6561234567": a leading space can only have
        # been a '+', so read it as one rather than refuse the number.
        return {key: ("+" + data[key][1:] if key in ("caller", "callee") and isinstance(data[key], str)
                      and data[key].startswith(" ") else data[key]) for key in data}

    @validates_schema
    def _who(self, data: dict[str, Any], **_kw: Any) -> None:
        _caller_or_account(data)


class QuoteQuery(WhoQuery):
    callee = fields.String(required=True, validate=NUMBER)


class BalanceOut(Schema):
    account = fields.String()
    balance = fields.String()
    available = fields.String()
    currency = fields.String()
    next_expiry_at = fields.String(allow_none=True)


class QuoteOut(Schema):
    authorized = fields.Boolean()
    max_duration_s = fields.Integer()
    reason = fields.String(allow_none=True)
    currency = fields.String(allow_none=True)
    rate = fields.Nested(RateOut, allow_none=True)
    available = fields.String(allow_none=True)
