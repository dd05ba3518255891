"""The text guard (credits.web.text_guard): NUL characters and unpaired surrogates anywhere in a request are
400 invalid_input naming the field, and nothing is written, on both backends (the switch lane on and off).

Found by the API fuzz test and the probes around it: on PostgreSQL a NUL that reached a query was a 500 (psycopg
refuses it), and an unpaired surrogate in a sign-in password was a 500 on both backends (argon2 cannot encode it).
"""

from __future__ import annotations

import pytest

from credits.web import text_guard
from tests.conftest import table_snapshot
from tests.integration.accounts_helpers import ADULT, PASSWORD
from tests.integration.switch_fixtures import (  # noqa: F401
    SG_CALLEE,
    callers_fixture,
    lane_fixture,
    plan_fixture,
    principals_fixture,
)

PROBLEM = "application/problem+json"
FACTORY_PASSWORD = "correct horse battery"  # tests.conftest.Factory's


#: (who, method, path, JSON body, the field named in the answer)
REFUSED = {
    # 500s on PostgreSQL before the guard:
    "card id in the path": ("customer", "DELETE", "/api/v1/me/payment-methods/pm_1%00", None, "(the URL path)"),
    "report reference in the path": ("support", "GET", "/api/v1/staff/security-reports/SR-%00", None,
                                     "(the URL path)"),
    "report to resolve": ("support", "POST", "/api/v1/staff/security-reports/%00/resolve", {"resolution": "done"},
                          "(the URL path)"),
    "transfer recipient": ("customer", "POST", "/api/v1/me/transfers",
                           {"to": "bob\x00@example.com", "amount": "1.00", "password": FACTORY_PASSWORD}, "to"),
    "credit note account": ("support", "POST", "/api/v1/staff/credit-notes",
                            {"account": "1\x00", "amount": "1.00", "reason": "goodwill"}, "account"),
    "end reason of a call": ("switch", "POST", "/api/v1/calls/c-1/complete",
                             {"duration_s": 60, "disposition": "answered", "end_reason": "bye\x00"}, "end_reason"),
    # 500 on both backends before the guard:
    "sign-in password": (None, "POST", "/api/v1/auth/login", {"email": "a@example.com", "password": "\ud800x"},
                         "password"),
    # Refused the same way everywhere else:
    "sign-up name": (None, "POST", "/api/v1/auth/register",
                     {"email": "new@example.com", "password": PASSWORD, **ADULT, "name": "Ada\udc00"}, "name"),
    "profile name": ("customer", "PATCH", "/api/v1/me", {"name": "Ada\x00"}, "name"),
    "a key": ("customer", "PATCH", "/api/v1/me", {"name\x00": "Ada"}, "(a key)"),
    "nested value": ("switch", "POST", "/api/v1/cdrs", {"cdrs": [{"call_id": "x\x00"}]}, "cdrs[0].call_id"),
    "query parameter": ("customer", "GET", "/api/v1/me/statement?after=1%00", None, "after"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_nul_or_unpaired_surrogate_is_400_and_changes_nothing(client, database, principals, lane, case):
    who, method, path, body, field = case
    before = table_snapshot(database)
    resp = client.open(path, method=method, json=body, headers=principals[who])
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    assert (resp.json["code"], resp.json["field"]) == ("invalid_input", field)
    assert table_snapshot(database) == before


def test_the_rule_itself():
    assert text_guard.is_text("") and text_guard.is_text("Zoë 🙂 \t\n\x01\x7f")
    assert not text_guard.is_text("a\x00b") and not text_guard.is_text("\ud800") and not text_guard.is_text("x\udfff")
    assert text_guard.is_text("\ud83d\ude42".encode("utf-16", "surrogatepass").decode("utf-16"))  # a paired one
