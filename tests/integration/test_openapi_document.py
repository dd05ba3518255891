"""The OpenAPI document (/api/v1/openapi.json) says what the API does, so a switch or client generated from it
works: errors are application/problem+json (DESIGN §5), a schema error is a 400 (never webargs' 422), and an
operation declares `security` exactly when calling it without credentials is refused with 401.

The operations come from the document itself and every API rule of the app is in it, so a route added later is
covered without touching this file.
"""

from __future__ import annotations

import re
from typing import Any

from tests.integration.test_access_control import UNSAFE, _openapi_path

PROBLEM = "application/problem+json"
SPEC = "/api/v1/openapi.json"
METHODS = ("get", "put", "post", "patch", "delete")


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
            if method in METHODS]


def _response(spec: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response


def test_every_documented_error_is_problem_json_and_schema_errors_are_400(client: Any) -> None:
    spec = client.get(SPEC).get_json()
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"title", "status"}
    assert "Error" not in spec["components"]["schemas"]  # flask-smorest's own error shape, which the app never sends
    for path, method, op in _operations(spec):
        errors = 0
        responses = op["responses"]
        assert "422" not in responses, (method, path)
        if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
            assert "400" in responses, (method, path)  # input with a schema: its schema error is documented
        for status, response in responses.items():
            if status == "default" or int(status) >= 400:
                content = _response(spec, response)["content"]
                assert list(content) == [PROBLEM], (method, path, status)
                assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
                errors += 1
        assert errors, (method, path)  # at least its 400 or the default error is documented
    calls = spec["paths"]["/api/v1/me/calls"]["get"]["responses"]["200"]["content"]
    assert set(calls) == {"application/json", "text/csv"}  # ?format=csv answers CSV, and says so


def test_a_schema_error_is_answered_as_documented(client: Any) -> None:
    spec = client.get(SPEC).get_json()
    documented = _response(spec, spec["paths"]["/api/v1/auth/token"]["post"]["responses"]["400"])
    r = client.post("/api/v1/auth/token", json={"email": 7, "password": ["x"]})
    assert r.status_code == 400 and r.mimetype == PROBLEM
    assert list(documented["content"]) == [r.mimetype]
    fields = spec["components"]["schemas"]["Problem"]["properties"]
    assert set(r.json) <= set(fields) and r.json["code"] == "invalid_input"
    assert set(r.json["errors"]["json"]) == {"email", "password"}


def test_security_is_declared_exactly_where_credentials_are_required(app: Any, client: Any) -> None:
    spec = client.get(SPEC).get_json()
    schemes = set(spec["components"]["securitySchemes"])
    api_rules = [r for r in app.url_map.iter_rules()
                 if r.rule.startswith("/api/v1/") and r.endpoint != "api-docs.openapi_json"]
    assert {_openapi_path(r) for r in api_rules} <= set(spec["paths"])  # no API route is missing from the document
    public, secured = [], []
    for path, method, op in _operations(spec):
        security = op.get("security", [])
        assert all(set(s) <= schemes for s in security), (method, path, security)
        url = re.sub(r"\{[^}]+\}", "1", path)
        send = getattr(client, method)
        r = send(url, json={}) if method.upper() in UNSAFE else send(url)
        if security:
            assert r.status_code == 401, (method, path, r.status_code)  # refused before anything else is looked at
            assert r.mimetype == PROBLEM and r.headers["WWW-Authenticate"] == "Bearer"
            secured.append(path)
        else:
            assert r.status_code != 401, (method, path, r.json)  # it says it is public: it is
            public.append(path)
    assert "/api/v1/me/purchases" in secured and "/api/v1/staff/refunds" in secured
    assert "/api/v1/calls/authorize" in secured and "/api/v1/auth/token" in public
