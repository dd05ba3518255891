"""Security report API (CHECKLIST P104, P105): report a compromise (signed in, or signed out with the link of a
security email), report unauthorised transactions, list one's reports; staff: the queue, a report, resolve,
unfreeze."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response, after_this_request, g
from marshmallow import RAISE

from credits.security import schemas, service
from credits.web.api import SESSION_SECURITY as SECURITY
from credits.web.api import Blueprint
from credits.web.auth import clear_session_cookie, current_user_id, login_required, staff_required
from credits.web.limits import client_ip

me_security_blp = Blueprint("me_security", __name__, url_prefix="/api/v1/me/security",
                            description="The signed-in customer's security reports")
public_security_blp = Blueprint("security_link", __name__, url_prefix="/api/v1/security",
                                description="Signed out: the \"this wasn't me\" link of security emails")
staff_security_blp = Blueprint("staff_security", __name__, url_prefix="/api/v1/staff",
                               description="Staff: security reports and money freezes")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _report(r: service.ReportView, *, mine: bool = False, staff: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"reference": r.reference, "kind": r.kind, "status": r.status,
                            "created_at": _iso(r.created_at), "since": _iso(r.since), "froze_money": r.froze_money,
                            "tx_ids": r.tx_ids, "answer_by": _iso(r.answer_by)}
    if mine or staff:
        body.update(description=r.description, resolved_at=_iso(r.resolved_at), resolution=r.resolution)
    if staff:
        body.update(user_id=r.user_id, account_number=r.account_number)
    return body


def _signed_out() -> None:
    """The caller's own session was revoked with the others: tell the browser to drop its cookie."""
    if getattr(g, "auth_via", None) == "cookie":
        @after_this_request
        def _clear(resp: Response) -> Response:
            clear_session_cookie(resp)
            return resp


@me_security_blp.route("/compromised", methods=["POST"])
@login_required
@me_security_blp.arguments(schemas.CompromiseIn)
@me_security_blp.response(201, schemas.ReportOut)
@me_security_blp.doc(security=SECURITY)
def report_compromised(body: dict[str, Any]) -> dict[str, Any]:
    """Report the account compromised: every session (this one too) and API token ends, money movement stops,
    a new password is required at the next sign-in; answers the case reference."""
    r = service.report_compromise(current_user_id(), since=body.get("since"), description=body.get("description"),
                                  ip=client_ip())
    _signed_out()
    return _report(r)


@public_security_blp.route("/compromised", methods=["POST"])
@public_security_blp.arguments(schemas.CompromiseLinkIn)
@public_security_blp.response(201, schemas.ReportOut)
def report_compromised_with_link(body: dict[str, Any]) -> dict[str, Any]:
    """Signed out: report the account compromised with the token of a "this wasn't me" link (single use)."""
    r = service.report_compromise_with_link(body["token"], since=body.get("since"),
                                            description=body.get("description"), ip=client_ip())
    return _report(r)


@me_security_blp.route("/unauthorized-transactions", methods=["POST"])
@login_required
@me_security_blp.arguments(schemas.UnauthorizedIn)
@me_security_blp.response(201, schemas.ReportOut)
@me_security_blp.doc(security=SECURITY)
def report_unauthorized(body: dict[str, Any]) -> dict[str, Any]:
    """Report transactions you did not make: name them (`tx_ids`) or the time they started (`since`);
    `freeze` stops money movement until support has looked. Answers the case reference."""
    r = service.report_unauthorized(current_user_id(), description=body["description"], since=body.get("since"),
                                    tx_ids=body.get("tx_ids"), freeze=body["freeze"], ip=client_ip())
    return _report(r)


@me_security_blp.route("/reports", methods=["GET"])
@login_required
@me_security_blp.response(200, schemas.MyReportsOut)
@me_security_blp.doc(security=SECURITY)
def my_reports() -> dict[str, Any]:
    """Your security reports, newest first."""
    return {"reports": [_report(r, mine=True) for r in service.reports_of(current_user_id())]}


@staff_security_blp.route("/security-reports", methods=["GET"])
@staff_required("security_reports.handle")
@staff_security_blp.arguments(schemas.QueueQuery, location="query", unknown=RAISE)
@staff_security_blp.response(200, schemas.QueueOut)
@staff_security_blp.doc(security=SECURITY)
def queue(args: dict[str, Any]) -> dict[str, Any]:
    """The support queue of security reports, oldest first (open ones by default), without descriptions."""
    status = None if args["status"] == "all" else args["status"]
    page = service.queue(status=status, kind=args.get("kind"), after=args.get("after"), limit=args["limit"])
    return {"reports": [_report(r, staff=True) for r in page.reports], "next_cursor": page.next_cursor}


@staff_security_blp.route("/security-reports/<string:reference>", methods=["GET"])
@staff_required("security_reports.handle")
@staff_security_blp.response(200, schemas.StaffReportOut)
@staff_security_blp.doc(security=SECURITY)
def get_report(reference: str) -> dict[str, Any]:
    """One report with the customer's description (the read is audit-logged)."""
    return _report(service.get_report(reference, staff_id=current_user_id()), staff=True)


@staff_security_blp.route("/security-reports/<string:reference>/resolve", methods=["POST"])
@staff_required("security_reports.handle")
@staff_security_blp.arguments(schemas.ResolveIn)
@staff_security_blp.response(200, schemas.StaffReportOut)
@staff_security_blp.doc(security=SECURITY)
def resolve(body: dict[str, Any], reference: str) -> dict[str, Any]:
    """Close a report with what was done (audit-logged). A freeze stays until unfrozen."""
    return _report(service.resolve(reference, resolution=body["resolution"], staff_id=current_user_id()), staff=True)


@staff_security_blp.route("/accounts/<int:user_id>/unfreeze", methods=["POST"])
@staff_required("accounts.freeze")
@staff_security_blp.arguments(schemas.UnfreezeIn)
@staff_security_blp.response(200, schemas.UnfreezeOut)
@staff_security_blp.doc(security=SECURITY)
def unfreeze(body: dict[str, Any], user_id: int) -> dict[str, Any]:
    """Let money move again on a frozen account, with a reason (audit-logged)."""
    r = service.unfreeze(user_id, reason=body["reason"], staff_id=current_user_id(), ip=client_ip())
    return {"user_id": r.user_id, "frozen_at": _iso(r.frozen_at), "frozen_reason": r.reason,
            "unfrozen_at": _iso(r.unfrozen_at)}
