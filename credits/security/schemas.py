"""Security report API schemas (marshmallow); unknown fields are rejected."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from credits.db import MAX_ROW_ID

DESCRIPTION = validate.Length(min=1, max=2000)
TOKEN = validate.Length(min=16, max=128)
REASON = validate.Length(min=1, max=500)


class CompromiseIn(Schema):
    since = fields.AwareDateTime(metadata={"description": "when things started going wrong (default: 30 days ago)"})
    description = fields.String(validate=DESCRIPTION)


class CompromiseLinkIn(CompromiseIn):
    token = fields.String(required=True, validate=TOKEN,
                          metadata={"description": "the token of a \"this wasn't me\" link from a security email"})


class UnauthorizedIn(Schema):
    since = fields.AwareDateTime(metadata={"description": "activity since this time is linked to the case"})
    tx_ids = fields.List(fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ROW_ID)),
                         validate=validate.Length(max=100),
                         metadata={"description": "transaction ids from the statement (yours only)"})
    description = fields.String(required=True, validate=DESCRIPTION)
    freeze = fields.Boolean(load_default=False, truthy={True}, falsy={False},
                            metadata={"description": "stop transfers, card purchases and auto-recharge meanwhile"})


class ReportOut(Schema):
    reference = fields.String()
    kind = fields.String()
    status = fields.String()
    created_at = fields.String()
    since = fields.String(allow_none=True)
    froze_money = fields.Boolean()
    tx_ids = fields.List(fields.Integer())
    answer_by = fields.String(metadata={"description": "support answers by then"})


class MyReportOut(ReportOut):
    description = fields.String(allow_none=True)
    resolved_at = fields.String(allow_none=True)
    resolution = fields.String(allow_none=True)


class MyReportsOut(Schema):
    reports = fields.List(fields.Nested(MyReportOut))


class StaffReportOut(MyReportOut):
    user_id = fields.Integer()
    account_number = fields.String(allow_none=True)


class QueueQuery(Schema):
    status = fields.String(validate=validate.OneOf(["open", "resolved", "all"]), load_default="open")
    kind = fields.String(validate=validate.OneOf(["compromise", "unauthorized_transactions"]))
    after = fields.String(validate=validate.Length(max=18))
    limit = fields.Integer(validate=validate.Range(min=1, max=200), load_default=50)


class QueueOut(Schema):
    reports = fields.List(fields.Nested(StaffReportOut))
    next_cursor = fields.String(allow_none=True)


class ResolveIn(Schema):
    resolution = fields.String(required=True, validate=REASON)


class UnfreezeIn(Schema):
    reason = fields.String(required=True, validate=REASON)


class UnfreezeOut(Schema):
    user_id = fields.Integer()
    frozen_at = fields.String()
    frozen_reason = fields.String(allow_none=True)
    unfrozen_at = fields.String()
