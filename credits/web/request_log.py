"""Per-request logging: the request id in every log record of the request, and one access line per request."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from credits import logging as logs
from credits.web.errors import request_id

log = logging.getLogger("credits.request")

#: Blueprints whose access lines show the route rather than the path (see `_access`).
ROUTE_ONLY_BLUEPRINTS = frozenset({"switch"})


def register(app: Flask) -> None:
    """Bind the request id to the logging context and log method, path (no query), status and duration."""

    @app.before_request
    def _bind() -> None:
        g.log_token = logs.set_request_id(request_id())
        g.started = time.perf_counter()

    @app.after_request
    def _access(resp: Response) -> Response:
        started = getattr(g, "started", None)
        elapsed = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
        # The query string is left out: it is where tokens in links travel. The switch API's lines name the route
        # (/api/v1/calls/<call_id>/complete), not the call: a call id is traffic data, kept with the call record
        # under its own retention, not in logs.
        rule = request.url_rule
        path = rule.rule if rule is not None and request.blueprint in ROUTE_ONLY_BLUEPRINTS else request.path
        log.info("%s %s %s", request.method, path, resp.status_code,
                 extra={"method": request.method, "path": path, "status": resp.status_code, "duration_ms": elapsed})
        return resp

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            try:
                logs.reset_request_id(token)
            except ValueError:  # reset from another context (streamed responses): just clear it
                logs.set_request_id(None)
