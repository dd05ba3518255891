"""The switch lane (credits/web/switch_lane.py) against Flask: the same requests with the lane on and off give
the same status, headers, bodies, rows and access lines; what the lane does not take, Flask answers unchanged.

Both backends. "Served by the lane" is observed by counting the requests that reach Flask behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from credits.accounts import apikeys
from credits.web import switch_lane
from credits.web.switch_lane import SwitchLane
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    FREE_CALLEE,
    NO_RATE_CALLEE,
    SG_CALLEE,
    UK_CALLEE,
    US_CALLEE,
    USD,
    assert_audit_clean,
    callers_fixture,
    plan_fixture,
    switch_fixture,
    switch_key_fixture,
    wallet_rows,
)

#: Headers that differ from one request to the next by design.
VARYING = {"X-Request-Id"}


@pytest.fixture(name="flask_hits")
def flask_hits_fixture(app: Any) -> Iterator[list[str]]:
    """The paths of the requests that went past the lane to Flask."""
    lane = app.wsgi_app
    lane = getattr(lane, "app", lane)  # inside ProxyFix when the settings name proxies
    assert isinstance(lane, SwitchLane)
    inner = lane.inner
    hits: list[str] = []

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        hits.append(environ["PATH_INFO"])
        return inner(environ, start_response)

    lane.inner = counting
    yield hits
    lane.inner = inner


@contextmanager
def lane_off() -> Iterator[None]:
    switch_lane.ENABLED = False
    try:
        yield
    finally:
        switch_lane.ENABLED = True


def seen(resp: Any, prefix: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (the varying ones left out) and body, with this run's call-id prefix taken out."""
    headers = {k: v for k, v in resp.headers.items() if k not in VARYING}
    return resp.status_code, headers, resp.get_data(as_text=True).replace(prefix, "<p>")


def access_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The access lines as the JSON log handler writes them, without time, duration and request id."""
    import json

    from credits.logging import JsonFormatter, ScrubFilter

    lines = []
    for record in records:
        if record.name == "credits.request":
            ScrubFilter().filter(record)
            line = json.loads(JsonFormatter().format(record))
            lines.append({k: v for k, v in line.items() if k not in ("time", "duration_ms", "request_id")})
    return lines


def script(switch: Any, prefix: str, caller: Any, poor: Any) -> list[Any]:
    """Every plain kind of authorize and complete; the answers."""
    out: list[Any] = []

    def both(n: int, callee: str, duration: int, disposition: str = "answered", **extra: Any) -> None:
        out.append(seen(switch.authorize(f"{prefix}-{n}", caller.phone, callee), prefix))
        out.append(seen(switch.complete(f"{prefix}-{n}", duration, disposition, **extra), prefix))

    both(1, SG_CALLEE, 125)
    both(2, US_CALLEE, 0, "no_answer")
    both(3, UK_CALLEE, 7, end_reason="caller_hangup", answered_at="2026-11-22T11:59:00Z",
         ended_at="2026-11-22T11:59:07Z")
    both(4, FREE_CALLEE, 60)
    out.append(seen(switch.authorize(f"{prefix}-5", caller.phone, NO_RATE_CALLEE), prefix))   # refused: no rate
    out.append(seen(switch.authorize(f"{prefix}-6", "+6599999999", SG_CALLEE), prefix))      # unknown caller
    out.append(seen(switch.authorize(f"{prefix}-7", poor.phone, SG_CALLEE), prefix))         # no credit
    out.append(seen(switch.authorize(f"{prefix}-8", caller.phone, SG_CALLEE,                 # by account
                                     account=caller.number), prefix))
    out.append(seen(switch.post("/calls/authorize", {"call_id": f"{prefix}-9", "callee": US_CALLEE,
                                                     "account": caller.number}), prefix))
    # Replays: the same answers again.
    out.append(seen(switch.authorize(f"{prefix}-1", caller.phone, SG_CALLEE), prefix))
    out.append(seen(switch.complete(f"{prefix}-1", 125, "answered"), prefix))
    return out


def test_the_lane_answers_and_writes_what_flask_does(switch, callers, flask_hits, caplog):
    caplog.set_level(logging.INFO, logger="credits.request")
    lane_caller, flask_caller = callers(credit=10 * USD), callers(credit=10 * USD)
    lane_poor, flask_poor = callers(credit=0), callers(credit=0)

    with_lane = script(switch, "lane", lane_caller, lane_poor)
    lane_log = access_lines(caplog.records)
    assert flask_hits == [], "the lane passed plain requests on to Flask"
    caplog.clear()
    with lane_off():
        with_flask = script(switch, "flsk", flask_caller, flask_poor)
    flask_log = access_lines(caplog.records)
    assert len(flask_hits) == len(with_flask)

    assert len(with_lane) == len(with_flask)
    for n, (lane, flask) in enumerate(zip(with_lane, with_flask, strict=True)):
        assert lane[0] == flask[0], n
        assert lane[1] == flask[1], n
        assert lane[2] == flask[2], n
    assert lane_log == flask_log and len(lane_log) == len(with_lane)
    assert {"level": "INFO", "logger": "credits.request", "message": "POST /api/v1/calls/<path:call_id>/complete 200",
            "method": "POST", "path": "/api/v1/calls/<path:call_id>/complete", "status": 200} in lane_log
    assert wallet_rows(lane_caller.wallet_id) == wallet_rows(flask_caller.wallet_id)
    assert wallet_rows(lane_poor.wallet_id) == wallet_rows(flask_poor.wallet_id)
    assert_audit_clean()


class _RequestIds(logging.Handler):
    """The request id bound when each access line was logged."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str | None] = []

    def emit(self, record: logging.LogRecord) -> None:
        from credits.logging import current_request_id

        self.ids.append(current_request_id())


def test_the_lane_echoes_a_well_formed_request_id_and_binds_it_to_the_access_line(switch, callers, flask_hits):
    caller = callers()
    ids = _RequestIds()
    logger = logging.getLogger("credits.request")
    logger.addHandler(ids)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        resp = switch.post("/calls/authorize", {"call_id": "rid-1", "caller": caller.phone, "callee": SG_CALLEE},
                           headers={**switch.headers(), "X-Request-Id": "switch-req-0001"})
        other = switch.complete("rid-1", 10)
    finally:
        logger.removeHandler(ids)
        logger.setLevel(level)
    assert resp.status_code == 200 and resp.headers["X-Request-Id"] == "switch-req-0001"
    assert other.status_code == 200 and len(other.headers["X-Request-Id"]) == 32  # not the client's: a new one
    assert flask_hits == []
    assert ids.ids == ["switch-req-0001", other.headers["X-Request-Id"]]
    from credits.logging import current_request_id

    assert current_request_id() is None  # unbound after the request


def test_the_last_used_time_of_the_key_is_recorded_by_the_lane(switch, switch_key, callers, flask_hits):
    caller = callers()
    assert switch.authorize("used-1", caller.phone, SG_CALLEE).status_code == 200
    assert flask_hits == []
    [(view, live)] = apikeys.list_keys()
    from credits import db as db_mod

    with db_mod.get().engine.connect() as conn:
        import sqlalchemy as sa

        used = conn.execute(sa.text("SELECT last_used_at FROM api_keys WHERE id = :i"), {"i": view.id}).scalar()
    assert live and used is not None


# Requests the lane does not take (or takes and gives up): Flask answers them exactly as without the lane,
# and nothing is written.
def _cases(caller: Any, revoked: str) -> list[tuple[str, dict[str, Any]]]:
    good = {"call_id": "x-1", "caller": caller.phone, "callee": SG_CALLEE}
    return [
        ("no key", {"path": "/calls/authorize", "json": good, "headers": {}}),
        ("unknown key", {"path": "/calls/authorize", "json": good,
                         "headers": {"Authorization": "Bearer csk_00000000_nope"}}),
        ("revoked key", {"path": "/calls/authorize", "json": good, "headers": {"Authorization": f"Bearer {revoked}"}}),
        ("revoked key, unknown caller", {"path": "/calls/authorize", "json": {**good, "caller": "+6599999999"},
                                         "headers": {"Authorization": f"Bearer {revoked}"}}),
        ("revoked key, unknown call", {"path": "/calls/nope-1/complete", "json": {"duration_s": 5,
                                                                                  "disposition": "answered"},
                                       "headers": {"Authorization": f"Bearer {revoked}"}}),
        ("revoked key, by account", {"path": "/calls/authorize", "json": {**good, "account": caller.number},
                                     "headers": {"Authorization": f"Bearer {revoked}"}}),
        ("text/plain", {"path": "/calls/authorize", "data": '{"call_id": "x-1"}', "content_type": "text/plain"}),
        ("not JSON", {"path": "/calls/authorize", "data": "{call_id", "content_type": "application/json"}),
        ("a list", {"path": "/calls/authorize", "json": [good]}),
        ("unknown field", {"path": "/calls/authorize", "json": {**good, "colour": "red"}}),
        ("missing callee", {"path": "/calls/authorize", "json": {"call_id": "x-1", "caller": caller.phone}}),
        ("callee with letters", {"path": "/calls/authorize", "json": {**good, "callee": "+65ABC"}}),
        ("null caller", {"path": "/calls/authorize", "json": {**good, "caller": None}}),
        ("call_id of 129", {"path": "/calls/authorize", "json": {**good, "call_id": "c" * 129}}),
        ("card in call_id", {"path": "/calls/authorize", "json": {**good, "call_id": "4242 4242 4242 4242"}}),
        ("card in account", {"path": "/calls/authorize", "json": {**good, "account": "4242424242424242"}}),
        ("unknown call", {"path": "/calls/nope-1/complete", "json": {"duration_s": 5, "disposition": "answered"}}),
        ("float duration", {"path": "/calls/nope-1/complete", "json": {"duration_s": 5.0,
                                                                      "disposition": "answered"}}),
        ("true duration", {"path": "/calls/nope-1/complete", "json": {"duration_s": True,
                                                                     "disposition": "answered"}}),
        ("over 24 h", {"path": "/calls/nope-1/complete", "json": {"duration_s": 86401, "disposition": "answered"}}),
        ("card in end_reason", {"path": "/calls/nope-1/complete", "json": {
            "duration_s": 5, "disposition": "answered", "end_reason": "4242424242424242"}}),
        ("bad time", {"path": "/calls/nope-1/complete", "json": {
            "duration_s": 5, "disposition": "answered", "answered_at": "yesterday"}}),
    ]


def test_what_the_lane_does_not_serve_flask_answers_as_without_it(switch, callers, flask_hits):
    caller = callers()
    revoked = apikeys.create_key("old", "switch")
    apikeys.revoke_key("old")
    from credits import db as db_mod

    database = db_mod.get()
    before = table_snapshot(database)
    for name, case in _cases(caller, revoked.secret):
        case = dict(case)
        path = case.pop("path")
        answers = []
        for lane_on in (True, False):
            flask_hits.clear()
            if lane_on:
                resp = switch.post(path, **case)
            else:
                with lane_off():
                    resp = switch.post(path, **case)
            assert flask_hits == [path.split("?")[0].replace("/calls", "/api/v1/calls")], name
            body = resp.get_json()
            if isinstance(body, dict):
                body.pop("request_id", None)
            answers.append((resp.status_code, {k: v for k, v in resp.headers.items() if k not in VARYING}, body))
        assert answers[0] == answers[1], name
        assert answers[0][0] in (400, 401, 404), (name, answers[0])
    assert table_snapshot(database) == before


def test_a_revoked_key_is_refused_on_a_call_in_progress_and_nothing_is_charged(switch, switch_key, callers,
                                                                               flask_hits):
    caller = callers()
    assert switch.authorize("rv-1", caller.phone, SG_CALLEE).status_code == 200
    apikeys.revoke_key(switch_key.view.name)
    from credits import db as db_mod

    before = table_snapshot(db_mod.get())
    resp = switch.complete("rv-1", 30)
    assert resp.status_code == 401 and resp.mimetype == "application/problem+json"
    assert "detail" not in resp.get_json()
    assert table_snapshot(db_mod.get()) == before
    assert flask_hits == ["/api/v1/calls/rv-1/complete"]


@pytest.mark.postgres  # the fast path, and the key on its first statement, are PostgreSQL's
def test_on_postgresql_the_key_rides_on_the_first_statement(switch, callers, database, flask_hits):
    from tests.integration.switch_fixtures import statements

    caller = callers()
    assert switch.authorize("warm", caller.phone, SG_CALLEE).status_code == 200  # the prefix table is loaded
    with statements(database) as authorize_sql:
        assert switch.authorize("ride-1", caller.phone, SG_CALLEE).get_json()["authorized"] is True
    with statements(database) as complete_sql:
        assert switch.complete("ride-1", 125).get_json()["charged"] == "0.025830"
    for sent in (authorize_sql, complete_sql):
        assert len(sent) == 2, "\n".join(sent)  # one read (with the key), one write
        assert "FROM api_keys" in sent[0] and "api_keys" not in sent[1]
    assert flask_hits == []


def test_a_conflict_found_by_the_service_is_answered_by_flask(switch, callers, flask_hits):
    caller = callers()
    assert switch.authorize("conf-1", caller.phone, SG_CALLEE).status_code == 200
    assert switch.complete("conf-1", 30).status_code == 200
    assert flask_hits == []
    again = switch.complete("conf-1", 31)  # a different duration: 409 from the service, via Flask
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert flask_hits == ["/api/v1/calls/conf-1/complete"]


def test_a_request_with_a_query_string_is_left_to_flask(switch, callers, flask_hits):
    caller = callers()
    resp = switch.post("/calls/authorize?x=1", {"call_id": "q-1", "caller": caller.phone, "callee": SG_CALLEE})
    assert resp.status_code == 200 and resp.get_json()["authorized"] is True
    assert flask_hits == ["/api/v1/calls/authorize"]


@pytest.mark.parametrize("settings_overrides", [{"proxy_count": 1}])
def test_behind_a_proxy_the_lane_checks_the_allowlist_against_the_forwarded_client(switch, callers, flask_hits):
    caller = callers()
    key = apikeys.create_key("pinned", "switch", allowed_ips="203.0.113.7")
    headers = {"Authorization": f"Bearer {key.secret}"}
    allowed = switch.post(
        "/calls/authorize", {"call_id": "px-1", "caller": caller.phone, "callee": SG_CALLEE},
        headers={**headers, "X-Forwarded-For": "203.0.113.7"})
    assert allowed.status_code == 200 and allowed.get_json()["authorized"] is True
    assert flask_hits == []
    refused = switch.post("/calls/authorize", {"call_id": "px-2", "caller": caller.phone, "callee": SG_CALLEE},
                          headers={**headers, "X-Forwarded-For": "198.51.100.1"})
    assert refused.status_code == 401
    assert flask_hits == ["/api/v1/calls/authorize"]
