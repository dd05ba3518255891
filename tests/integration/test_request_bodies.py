"""Request bodies the JSON decoder cannot take (credits.web.json_body): 400 invalid_input problem+json, nothing
written, on customer, staff, public and switch routes, with the switch lane on and off. Both backends.

Found while fuzzing the API: a body nested deeper than the recursion limit, or holding an integer literal longer
than int() reads, was a 500 (in the card guard, in webargs, and, for a small deep body, out of the switch lane
before Flask could answer at all).
"""

from __future__ import annotations

import json

import pytest

from credits.web import json_body
from tests.conftest import table_snapshot
from tests.integration.switch_fixtures import (  # noqa: F401
    SG_CALLEE,
    callers_fixture,
    lane_fixture,
    plan_fixture,
    principals_fixture,
)

PROBLEM = "application/problem+json"
#: 4000 bytes: small enough for the switch lane to read (switch_lane.MAX_BODY).
DEEP = "[" * 2000 + "]" * 2000
BODIES = {
    "nested 2000 deep": DEEP,
    "nested 65 deep": '{"cdrs": ' + "[" * 64 + "]" * 64 + "}",
    "a 5000-digit number": '{"duration_s": ' + "9" * 5000 + "}",
}


ROUTES = [
    ("PATCH", "/api/v1/me", "customer"),
    ("POST", "/api/v1/me/transfers", "customer"),
    ("POST", "/api/v1/auth/login", None),
    ("POST", "/api/v1/staff/credit-notes", "support"),
    ("POST", "/api/v1/calls/authorize", "switch"),
    ("POST", "/api/v1/calls/c-1/complete", "switch"),
    ("POST", "/api/v1/cdrs", "switch"),
]


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_a_body_the_decoder_cannot_take_is_400_and_changes_nothing(client, database, principals, lane, body):
    before = table_snapshot(database)
    for method, path, who in ROUTES:
        resp = client.open(path, method=method, data=body, content_type="application/json",
                           headers=principals[who])
        assert resp.status_code == 400, (path, resp.get_data(as_text=True))
        assert resp.mimetype == PROBLEM and resp.json["code"] == "invalid_input", path
    assert table_snapshot(database) == before


def test_the_limits_themselves_are_read():
    nested = "[" * json_body.MAX_DEPTH + "]" * json_body.MAX_DEPTH
    assert json_body.loads(nested) == json.loads(nested)
    longest = "9" * json_body.MAX_INT_DIGITS
    assert json_body.loads(f"[{longest}, -{longest}]") == [int(longest), -int(longest)]
    with pytest.raises(json_body.BodyRefused):
        json_body.loads("[" + "9" * (json_body.MAX_INT_DIGITS + 1) + "]")
    with pytest.raises(json.JSONDecodeError):
        json_body.loads("{not json")
