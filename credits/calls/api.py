"""Switch API v1 (DESIGN §5): authorize, update, complete, batch CDRs, balance, quote. Bearer API key."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from credits import money
from credits.calls import schemas, service
from credits.rating.engine import Rate
from credits.web.api import Blueprint
from credits.web.auth import require_api_key
from credits.web.limits import limiter

# Request schemas are given as instances, built once: given a class, webargs builds a new schema on every
# request (the switch API's requests are the busiest of the service).
blp = Blueprint("switch", __name__, url_prefix="/api/v1", description="Switch API (stable contract, version 1)")
SECURITY: list[dict[str, list[str]]] = [{"switchKey": []}]
# No rate limits here (an authenticated machine; refusing its requests would cut customers' calls): exempt,
# its requests skip the limiter's per-request bookkeeping.
limiter.exempt(blp)


def _fresh_rate_cache(_state: Any) -> None:
    # Each app starts with an empty prefix-table cache: plan ids and versions repeat across databases.
    from credits.rating.service import clear_cache

    clear_cache()


blp.record_once(_fresh_rate_cache)


def _rate(rate: Rate | None) -> dict[str, Any] | None:
    if rate is None:
        return None
    return {"prefix": rate.prefix, "destination": rate.destination,
            "rate_per_minute": money.format_micro(rate.rate_per_minute),
            "connect_fee": money.format_micro(rate.connect_fee), "first_increment_s": rate.first_increment_s,
            "next_increment_s": rate.next_increment_s}


def _amount(value: int | None) -> str | None:
    return None if value is None else money.format_micro(value)


def authorize_body(r: service.AuthorizeResult) -> dict[str, Any]:
    if not r.authorized:
        return {"call_id": r.call_id, "authorized": False, "max_duration_s": 0, "reason": r.reason}
    return {"call_id": r.call_id, "authorized": True, "max_duration_s": r.max_duration_s,
            "reserved": money.format_micro(r.reserved), "currency": r.currency, "rate": _rate(r.rate),
            "balance": _amount(r.balance), "available": _amount(r.available)}


@blp.route("/calls/authorize", methods=["POST"])
@require_api_key("switch")
@blp.arguments(schemas.AuthorizeIn())
@blp.response(200, schemas.AuthorizeOut)
@blp.doc(security=SECURITY)
def authorize(body: dict[str, Any]) -> dict[str, Any]:
    """May this caller call this number, and for how long? Reserves credit for the allowed duration."""
    return authorize_body(service.authorize(body["call_id"], body.get("caller"), body["callee"], body.get("account")))


@blp.route("/calls/<path:call_id>/update", methods=["POST"])
@require_api_key("switch")
@blp.arguments(schemas.UpdateIn())
@blp.response(200, schemas.UpdateOut)
@blp.doc(security=SECURITY)
def update(body: dict[str, Any], call_id: str) -> dict[str, Any]:
    """Recompute the total allowed duration of a call in progress (credit bought meanwhile extends it)."""
    r = service.update_call(call_id, body["elapsed_s"])
    return {"authorized": r.authorized, "max_duration_s": r.max_duration_s}


@blp.route("/calls/<path:call_id>/complete", methods=["POST"])
@require_api_key("switch")
@blp.arguments(schemas.CompleteIn())
@blp.response(200, schemas.CompleteOut)
@blp.doc(security=SECURITY)
def complete(body: dict[str, Any], call_id: str) -> dict[str, Any]:
    """Report a finished call: charge it and store its record. A repeat with the same body is answered again."""
    return complete_body(service.complete(call_id, body["duration_s"], body["disposition"],
                                          answered_at=body.get("answered_at"), ended_at=body.get("ended_at"),
                                          end_reason=body.get("end_reason")))


def complete_body(r: service.CompleteResult) -> dict[str, Any]:
    return {"call_id": r.call_id, "charged": money.format_micro(r.charged), "billed_duration_s": r.billed_duration_s,
            "balance": money.format_micro(r.balance)}


@blp.route("/cdrs", methods=["POST"])
@require_api_key("switch")
@blp.arguments(schemas.CdrsIn())
@blp.response(200, schemas.CdrsOut)
@blp.doc(security=SECURITY)
def cdrs(body: dict[str, Any]) -> dict[str, Any]:
    """Rate and charge up to 1000 calls that were never authorised; one result per item, in order."""
    results = service.import_cdrs(body["cdrs"])
    return {"results": [{"call_id": r.call_id, "status": r.status, "charged": money.format_micro(r.charged),
                         "error": r.error} for r in results]}


@blp.route("/balance", methods=["GET"])
@require_api_key("switch")
@blp.arguments(schemas.WhoQuery(), location="query", unknown=RAISE)
@blp.response(200, schemas.BalanceOut)
@blp.doc(security=SECURITY)
def balance(args: dict[str, Any]) -> dict[str, Any]:
    """Balance, available credit and next expiry of a caller or account."""
    r = service.balance(args.get("caller"), args.get("account"))
    return {"account": r.account, "balance": money.format_micro(r.balance),
            "available": money.format_micro(r.available), "currency": r.currency,
            "next_expiry_at": r.next_expiry_at.isoformat() if r.next_expiry_at else None}


@blp.route("/quote", methods=["GET"])
@require_api_key("switch")
@blp.arguments(schemas.QuoteQuery(), location="query", unknown=RAISE)
@blp.response(200, schemas.QuoteOut)
@blp.doc(security=SECURITY)
def quote(args: dict[str, Any]) -> dict[str, Any]:
    """The rate and max duration a call would get now, without reserving (for IVR announcements)."""
    r = service.quote(args.get("caller"), args["callee"], args.get("account"))
    return {"authorized": r.authorized, "max_duration_s": r.max_duration_s, "reason": r.reason, "currency": r.currency,
            "rate": _rate(r.rate), "available": _amount(r.available)}
