"""The JSON API: one flask-smorest Api whose OpenAPI document is served at /api/v1/openapi.json."""

from __future__ import annotations

import http
from typing import Any

import marshmallow as ma
from flask import Flask
from flask_smorest import Api as SmorestApi
from flask_smorest import Blueprint as SmorestBlueprint
from flask_smorest.utils import prepare_response
from webargs.flaskparser import FlaskParser

from credits.web.errors import PROBLEM

API_PREFIX = "/api/v1"
#: The `security` of an operation signed-in customers and staff call: a browser session or a personal token.
SESSION_SECURITY: list[dict[str, list[str]]] = [{"sessionCookie": []}, {"personalToken": []}]


class ProblemSchema(ma.Schema):
    """An error answer (RFC 9457), as credits.web.errors.problem writes it. Documentation only."""

    type = ma.fields.String(metadata={"description": "about:blank, or a URI naming the problem's code"})
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True, metadata={"description": "the HTTP status, repeated"})
    detail = ma.fields.String(metadata={"description": "what went wrong, for a person (absent on 401 and 5xx)"})
    code = ma.fields.String(metadata={"description": "a stable machine-readable name, e.g. invalid_input"})
    request_id = ma.fields.String(metadata={"description": "also in the X-Request-Id header"})
    field = ma.fields.String(metadata={"description": "the input field at fault, where there is one"})
    errors = ma.fields.Dict(metadata={"description": "schema errors by field (code invalid_input)"})


class _Parser(FlaskParser):
    # Input that does not match the schema is a 400 (DESIGN §5), not webargs' 422; the document says so too.
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(SmorestBlueprint):  # type: ignore[misc]  # flask-smorest has no type hints
    """flask-smorest's Blueprint whose schema errors are 400 (documented as such). Every API blueprint uses it."""

    ARGUMENTS_PARSER = _Parser()


class Api(SmorestApi):  # type: ignore[misc]  # flask-smorest has no type hints
    """flask-smorest's Api whose documented error responses are what the app sends: application/problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:  # flask-smorest 0.47's, with the error content type changed
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM)
            self.spec.components.response(status.name, response, lazy=True)
        default: dict[str, Any] = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(default, self.spec, PROBLEM)
        self.spec.components.response("DEFAULT_ERROR", default, lazy=True)


def init_api(app: Flask) -> Api:
    app.config.update(
        API_TITLE="Prepaid VoIP credits API",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=API_PREFIX,
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "Switch API (bearer API key), customer, staff and public endpoints. "
                                    "Amounts are decimal strings; errors are application/problem+json."},
            "components": {"securitySchemes": {
                "switchKey": {"type": "http", "scheme": "bearer", "description": "switch API key (scope switch)"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "__Host-session",
                                  "description": "browser session; unsafe methods also need X-CSRF-Token"},
                "personalToken": {"type": "http", "scheme": "bearer",
                                  "description": "personal API token from POST /api/v1/auth/token"},
            }},
        },
    )
    api = Api(app)
    from credits.calls.api import blp as calls_blp
    from credits.calls.schemas import CdrIn

    api.spec.components.schema("Cdr", schema=CdrIn)  # the items of POST /api/v1/cdrs (see CdrsIn)

    api.register_blueprint(calls_blp)
    from credits.payments.api import blp as payments_blp
    from credits.payments.api import staff_blp as staff_payments_blp

    api.register_blueprint(payments_blp)
    api.register_blueprint(staff_payments_blp)
    from credits.accounts.api import auth_blp, me_blp, staff_sessions_blp

    for blp in (auth_blp, me_blp, staff_sessions_blp):
        api.register_blueprint(blp)
    from credits.security.api import me_security_blp, public_security_blp, staff_security_blp

    for blp in (me_security_blp, public_security_blp, staff_security_blp):
        api.register_blueprint(blp)
    return api
