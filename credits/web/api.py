"""The JSON API: one flask-smorest Api whose OpenAPI document is served at /api/v1/openapi.json."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api

API_PREFIX = "/api/v1"


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
