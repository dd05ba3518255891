"""Map errors to HTTP: application/problem+json for the API, a readable page elsewhere; never a stack trace."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from credits.errors import CreditsError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def choose_request_id(incoming: str) -> str:
    """The client's X-Request-Id when it is 8-64 letters, digits and dashes; else a new random id."""
    return incoming if 8 <= len(incoming) <= 64 and incoming.replace("-", "").isalnum() else uuid.uuid4().hex


def request_id() -> str:
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = choose_request_id(request.headers.get("X-Request-Id", ""))
        g.request_id = rid
    return str(rid)


def problem(status: int, title: str, detail: str | None = None, code: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if code:
        body["type"] = f"https://credits.invalid/problems/{code}"
        body["code"] = code
    if detail:
        body["detail"] = detail
    body["request_id"] = request_id()
    body.update(extra)
    resp = jsonify(body)
    resp.status_code = status
    resp.mimetype = PROBLEM
    return resp


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/webhooks/")) or request.accept_mimetypes.best == "application/json"


def register(app: Flask) -> None:
    @app.before_request
    def _rid() -> None:
        request_id()

    @app.after_request
    def _echo_rid(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = request_id()
        return resp

    @app.errorhandler(CreditsError)
    def _domain(exc: CreditsError) -> Any:
        detail = exc.message if exc.safe else None
        if exc.status >= 500:
            log.error("error %s (request %s)", exc.code, request_id())
        extra = {k: v for k, v in exc.extra.items() if k in ("field", "errors")} if exc.safe else {}
        if _wants_json():
            resp = problem(exc.status, exc.title, detail, exc.code, **extra)
            if exc.status == 401:
                resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return _page(exc.status, exc.title, detail)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        if status in (400, 422) and "messages" in data:
            # Schema validation (webargs, 400 by credits.web.api.Blueprint): one shape for every schema error.
            return problem(400, "Invalid input", "The request body or query does not match the schema.",
                           "invalid_input", errors=data["messages"])
        if _wants_json():
            resp = problem(status, exc.name, exc.description if status < 500 else None)
            if status == 405 and exc.get_response().headers.get("Allow"):
                resp.headers["Allow"] = exc.get_response().headers["Allow"]
            return resp
        return _page(status, exc.name, exc.description)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unexpected error (request %s)", request_id())
        if _wants_json():
            return problem(500, "Internal Server Error", "Something went wrong on our side.")
        return _page(500, "Internal Server Error", "Something went wrong on our side.")


def _page(status: int, title: str, detail: str | None) -> Response:
    from markupsafe import escape

    html = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>{t}</title>"
        "<main><h1>{t}</h1><p>{d}</p><p><small>Reference: {r}</small></p></main></html>"
    ).format(t=escape(title), d=escape(detail or ""), r=escape(request_id()))
    return Response(html, status=status, mimetype="text/html")
