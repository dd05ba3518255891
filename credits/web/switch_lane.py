"""The switch lane: a WSGI layer in front of Flask that serves the two requests a switch sends for every call,
authorize and complete, when they are plain and succeed; everything else goes on to Flask unchanged.

Why: a busy switch sends an authorize and a complete per call, and for these small requests Flask's
per-request machinery (request context, before/after hooks, webargs, flask-smorest's response schemas)
cost more CPU than the work itself (DESIGN §5 sets the target: the authorize+complete mix at >= 0.6 of the
requests/s of a bare endpoint doing one durable UPDATE).

What the lane does for a request it takes is what the Flask route does, in the same order, through the
same functions:
  - the card-number guard (CHECKLIST I55) on every body value the guard would check, and the text guard's rule
    (no NUL, no unpaired surrogate) on the free-text fields;
  - the API key (scope switch, the key's IP allowlist against REMOTE_ADDR, so behind ProxyFix when one is
    configured), judged before anything else but read by the service's first statement (`apikeys.precheck`,
    credits.db.Precheck: one round trip fewer), then `apikeys.record_use`;
  - the service call (`service.authorize` / `service.complete`, with their own validation);
  - the same answer: status 200, the body the route returns (its keys sorted, as Flask's JSON provider writes
    them), X-Request-Id (the client's when well-formed), the security headers of a private answer;
  - the same access line (`credits.request` logger: method, route, status, duration) with the request id
    bound to every log record of the request.

It takes a request only when it is unremarkable: POST, no query string, `Content-Type: application/json`
(charset utf-8 at most), a Content-Length of at most MAX_BODY bytes, a JSON object with only the schema's
fields and values of the schema's types, a call id of printable ASCII without "/". Anything else, any
exception from the key check or the service (a missing or revoked key, malformed input, an unknown call, a
Conflict, a database error), and any card number goes to Flask with the body put back, and Flask answers
exactly as without the lane (401, 400, 404, 409 problem+json, 500). The services write nothing when they
raise, and both requests are idempotent (a replayed authorize or complete is answered as the first), so a
request that Flask serves after the lane tried it changes nothing more than Flask alone would.

`tests/integration/test_switch_lane.py` sends the same requests with the lane on and off and compares
status, headers, bodies, rows and log lines.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from credits import config, db
from credits import logging as logs
from credits.accounts import apikeys
from credits.calls import service
from credits.calls.api import authorize_body, complete_body
from credits.calls.models import DISPOSITIONS
from credits.web import card_guard, headers, json_body, text_guard
from credits.web.auth import parse_bearer
from credits.web.errors import choose_request_id
from credits.web.request_log import log as access_log

#: Off: every request goes to Flask (tests compare the two).
ENABLED = True

AUTHORIZE_PATH = "/api/v1/calls/authorize"
CALLS_PREFIX = "/api/v1/calls/"
COMPLETE_SUFFIX = "/complete"
#: The routes' rules, as the access line names them (credits.web.request_log).
AUTHORIZE_RULE = "/api/v1/calls/authorize"
COMPLETE_RULE = "/api/v1/calls/<path:call_id>/complete"
ACCESS_LINES = {rule: f"POST {rule} 200" for rule in (AUTHORIZE_RULE, COMPLETE_RULE)}
#: Larger bodies go to Flask (an authorize or complete body is about 100 bytes).
MAX_BODY = 4096
JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})
AUTHORIZE_FIELDS = frozenset({"call_id", "caller", "callee", "account"})
COMPLETE_FIELDS = frozenset({"duration_s", "disposition", "answered_at", "ended_at", "end_reason"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _plain_text(value: object, longest: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= longest and all(" " <= ch <= "~" for ch in value)


def _number(value: object) -> bool:
    if not isinstance(value, str):
        return False
    digits = value[1:] if value.startswith("+") else value
    return 1 <= len(digits) <= 20 and digits.isascii() and digits.isdigit()


def _authorize_args(body: dict[str, Any]) -> tuple[str, str | None, str, str | None] | None:
    """The arguments of service.authorize when the body is one the schema accepts as it is, else None."""
    if not AUTHORIZE_FIELDS.issuperset(body):
        return None
    call_id, caller, callee, account = (body.get(name) for name in ("call_id", "caller", "callee", "account"))
    if not _plain_text(call_id, 128) or not _number(callee):
        return None
    if "caller" in body and not _number(caller):
        return None
    if "account" in body and not (isinstance(account, str) and 1 <= len(account) <= 16 and account.isascii()
                                  and account.isdigit()):
        return None
    if caller is None and account is None:
        return None
    return call_id, caller, callee, account  # type: ignore[return-value]


def _complete_args(body: dict[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments of service.complete when the schema accepts the body as it is, else None."""
    if not COMPLETE_FIELDS.issuperset(body):
        return None
    duration = body.get("duration_s")
    if type(duration) is not int or not 0 <= duration <= service.MAX_DURATION_INPUT_S:
        return None
    if body.get("disposition") not in DISPOSITIONS:
        return None
    for name, longest in (("answered_at", 40), ("ended_at", 40), ("end_reason", 32)):
        value = body.get(name)
        if value is not None and not (isinstance(value, str) and len(value) <= longest and text_guard.is_text(value)):
            return None
    return {"duration_s": duration, "disposition": body["disposition"], "answered_at": body.get("answered_at"),
            "ended_at": body.get("ended_at"), "end_reason": body.get("end_reason")}


def _holds_card_number(body: dict[str, Any]) -> bool:
    """What the card guard would refuse: any value but the switch's number fields (keys are fixed names)."""
    return any(isinstance(value, str) and name not in card_guard.SWITCH_NUMBER_FIELDS
               and card_guard.holds_card_number(value) for name, value in body.items())


class SwitchLane:
    """WSGI middleware: serve plain, successful authorize and complete requests; hand the rest to `inner`."""

    def __init__(self, inner: WSGIApp, settings: config.Config) -> None:
        self.inner = inner
        self.fixed_headers = headers.private_response_headers(settings)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not ENABLED or environ.get("REQUEST_METHOD") != "POST":
            return self.inner(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if path == AUTHORIZE_PATH:
            call_id = None
        elif path.startswith(CALLS_PREFIX) and path.endswith(COMPLETE_SUFFIX):
            call_id = path[len(CALLS_PREFIX):-len(COMPLETE_SUFFIX)]
            if "/" in call_id or not _plain_text(call_id, 128):
                return self.inner(environ, start_response)
        else:
            return self.inner(environ, start_response)
        if environ.get("QUERY_STRING") or environ.get("CONTENT_TYPE", "").lower() not in JSON_TYPES:
            return self.inner(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return self.inner(environ, start_response)
        if not 0 < length <= MAX_BODY:
            return self.inner(environ, start_response)
        started = time.perf_counter()
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # for Flask, should it serve the request after all
        answer = self._serve(environ, raw, call_id, started)
        if answer is None:
            return self.inner(environ, start_response)
        start_response("200 OK", answer[0])
        return [answer[1]]

    def _serve(self, environ: dict[str, Any], raw: bytes, call_id: str | None,
               started: float) -> tuple[list[tuple[str, str]], bytes] | None:
        """The answer's headers and body, or None when Flask must serve the request (nothing written then)."""
        try:
            body = json_body.loads(raw.decode())
        except (ValueError, json_body.BodyRefused):
            return None
        if not isinstance(body, dict) or _holds_card_number(body):
            return None
        args = _authorize_args(body) if call_id is None else None
        kwargs = _complete_args(body) if call_id is not None else None
        if args is None and kwargs is None:
            return None
        rule = AUTHORIZE_RULE if call_id is None else COMPLETE_RULE
        token = parse_bearer(environ.get("HTTP_AUTHORIZATION", ""))
        rid = choose_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        log_token = logs.set_request_id(rid)
        try:
            try:
                with db.sticky_raw_connection():
                    # The key is read by the service's first statement and judged before anything else.
                    check = apikeys.precheck(token, "switch", environ.get("REMOTE_ADDR"))
                    if args is not None:
                        result = authorize_body(service.authorize(*args, precheck=check))
                    else:
                        result = complete_body(service.complete(call_id or "", **(kwargs or {}), precheck=check))
                    key = check.ensure()
                apikeys.record_use(key)
            except Exception:  # noqa: BLE001 - Flask serves it again and answers (401, 4xx problem+json, 500)
                return None
            payload = (json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n").encode()
            response_headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                                ("X-Request-Id", rid), *self.fixed_headers]
            status = 200
            elapsed = round((time.perf_counter() - started) * 1000, 1)
            # Fixed text and numbers only (no call id, no number): nothing for the log filter to scrub.
            access_log.info(ACCESS_LINES[rule], extra={"method": "POST", "path": rule, "status": status,
                                                       "duration_ms": elapsed, logs.FIXED_TEXT: True})
            return response_headers, payload
        finally:
            logs.reset_request_id(log_token)

