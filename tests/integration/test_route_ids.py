"""`<int:...>` path ids are row ids: a number larger than a BIGINT is no such page (404), never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from credits.db import MAX_ROW_ID as MAX_ID
from tests.integration.accounts_helpers import signed_in, staff_client

HUGE = ["9223372036854775808", "99999999999999999999", "1" * 5000]


def test_every_int_route_uses_the_bounded_converter(app: Any):
    rules = [r for r in app.url_map.iter_rules() if any(c.__class__.__name__ == "RowIdConverter"
                                                        for c in r._converters.values())]
    ints = [r for r in app.url_map.iter_rules() if "<int:" in r.rule]
    assert ints and {r.rule for r in ints} == {r.rule for r in rules}


@pytest.mark.parametrize("number", HUGE)
def test_customer_routes_answer_404_for_ids_beyond_bigint(app: Any, client: Any, number: str):
    csrf = signed_in(client)
    assert client.get(f"/api/v1/me/purchases/{number}").status_code == 404
    assert client.delete(f"/api/v1/me/sessions/{number}", headers=csrf).status_code == 404
    # The largest id is a row id like any other: looked up, not found.
    resp = client.get(f"/api/v1/me/purchases/{MAX_ID}")
    assert resp.status_code == 404 and resp.headers["Content-Type"].startswith("application/problem+json")


def test_staff_routes_answer_404_for_ids_beyond_bigint(app: Any, make: Any):
    staff, csrf = staff_client(app, make)
    for number in HUGE:
        assert staff.get(f"/api/v1/staff/refunds/{number}").status_code == 404
        assert staff.delete(f"/api/v1/staff/accounts/{number}/sessions", headers=csrf).status_code == 404
    resp = staff.get(f"/api/v1/staff/refunds/{MAX_ID}")
    assert resp.status_code == 404, resp.get_data(as_text=True)


def test_openapi_states_the_bound(client: Any):
    spec = client.get("/api/v1/openapi.json").get_json()
    path = spec["paths"]["/api/v1/me/purchases/{purchase_id}"]
    params = path.get("parameters", []) + path["get"].get("parameters", [])
    (param,) = [p for p in params if p["name"] == "purchase_id"]
    assert param["schema"]["maximum"] == MAX_ID
