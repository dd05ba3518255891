"""Switch API keys (CHECKLIST L83, L84), the cases test_switch_bad_input.py does not already show: a credential of
another scope, a forged client address, rotation with overlap, no key in URLs.

(Covered there: missing, malformed, unknown, revoked keys, the source-IP allowlist, hashed storage, last use.)
"""

from __future__ import annotations

import pytest
from flask import jsonify

from credits.accounts import apikeys
from credits.web.auth import require_api_key
from tests.integration.accounts_helpers import PASSWORD, register
from tests.integration.switch_fixtures import callers_fixture, plan_fixture, switch_key_fixture  # noqa: F401


def _no_detail(r, status=401):
    assert r.status_code == status and r.mimetype == "application/problem+json"
    assert "detail" not in r.json and r.json["code"] == "unauthorized"
    return r


def test_L83_a_credential_of_another_scope_is_401_without_detail(app, client, switch_key, callers):
    caller = callers()

    @require_api_key("reports")
    def reports_probe():
        return jsonify(ok=True)

    app.add_url_rule("/api/v1/_reports_probe", "reports_probe", reports_probe)
    switch = {"Authorization": f"Bearer {switch_key.secret}"}
    assert client.get("/api/v1/balance", query_string={"caller": caller.phone}, headers=switch).status_code == 200
    _no_detail(client.get("/api/v1/_reports_probe", headers=switch))  # a switch key is for the switch only
    _no_detail(client.get("/api/v1/me", headers=switch))  # ...and is no customer credential
    # A customer's personal API token is no switch key.
    register(client)
    token = client.post("/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}).json["token"]
    personal = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=personal).status_code == 200
    _no_detail(client.get("/api/v1/balance", query_string={"caller": caller.phone}, headers=personal))
    _no_detail(client.post("/api/v1/calls/authorize", headers=personal,
                           json={"call_id": "x-1", "caller": caller.phone, "callee": "+6561234567"}))


def test_L83_allowlist_uses_the_peer_address_not_a_forwarded_header(client, callers):
    caller = callers()
    key = apikeys.create_key("pbx-edge", "switch", allowed_ips="10.0.0.0/8")
    headers = {"Authorization": f"Bearer {key.secret}", "X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"}
    _no_detail(client.get("/api/v1/balance", query_string={"caller": caller.phone}, headers=headers))
    ok = client.get("/api/v1/balance", query_string={"caller": caller.phone}, headers=headers,
                    environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert ok.status_code == 200


def test_L84_rotation_with_overlap_then_revoke_the_old_key(client, callers):
    caller = callers()
    old = apikeys.create_key("switch-2026a", "switch")
    new = apikeys.create_key("switch-2026b", "switch")
    assert old.secret != new.secret and old.view.prefix != new.view.prefix
    for key in (old, new):  # both live while the switches are reconfigured
        r = client.get("/api/v1/balance", query_string={"caller": caller.phone},
                       headers={"Authorization": f"Bearer {key.secret}"})
        assert r.status_code == 200
    apikeys.revoke_key("switch-2026a")
    _no_detail(client.get("/api/v1/balance", query_string={"caller": caller.phone},
                          headers={"Authorization": f"Bearer {old.secret}"}))
    assert client.get("/api/v1/balance", query_string={"caller": caller.phone},
                      headers={"Authorization": f"Bearer {new.secret}"}).status_code == 200


@pytest.mark.parametrize("param", ["api_key", "key", "token", "access_token"])
def test_L84_a_key_in_the_url_is_never_accepted(client, callers, switch_key, param):
    caller = callers()
    r = client.get("/api/v1/balance", query_string={"caller": caller.phone, param: switch_key.secret})
    assert r.status_code in (400, 401) and switch_key.secret not in r.get_data(as_text=True)
    assert not any(p["name"] in ("api_key", "key", "token")
                   for path in client.get("/api/v1/openapi.json").json["paths"].values()
                   for op in path.values() if isinstance(op, dict) for p in op.get("parameters", []))
