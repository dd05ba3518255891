"""The signed-out page behind the "this wasn't me" link of security emails (GET shows the form, POST reports).

The link's token is the only credential: a forged cross-site POST would need it, so the form carries no other
CSRF token. Responses are never cached, and Referrer-Policy (credits.web.headers) keeps the token in the URL
from leaking to other sites.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from flask import Blueprint, Response, make_response, render_template, request

from credits import clock
from credits.errors import DomainError, ValidationError
from credits.security import links, service
from credits.web.limits import client_ip

bp = Blueprint("security_pages", __name__)
TEMPLATE = "security/compromised.html"


def _page(status: int = 200, **values: Any) -> Response:
    values.setdefault("reference", None)
    values.setdefault("invalid", False)
    values.setdefault("error", None)
    values.setdefault("today", clock.now().date().isoformat())
    resp = make_response(render_template(TEMPLATE, **values), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _since(value: str) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError("the date is YYYY-MM-DD", field="since") from exc
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@bp.route(links.PATH, methods=["GET"])
def compromised_form() -> Response:
    token = request.args.get("token", "")
    try:
        service.check_link(token)
    except links.InvalidLink as exc:
        return _page(400, invalid=True, error=exc.message)
    return _page(token=token)


@bp.route(links.PATH, methods=["POST"])
def compromised() -> Response:
    form = request.form
    token, description = form.get("token", ""), form.get("description", "")
    try:
        r = service.report_compromise_with_link(token, since=_since(form.get("since", "")),
                                                description=description or None, ip=client_ip())
    except links.InvalidLink as exc:
        return _page(400, invalid=True, error=exc.message)
    except DomainError as exc:
        return _page(400, token=token, since=form.get("since", ""), description=description, error=exc.message)
    return _page(reference=r.reference)
