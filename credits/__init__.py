"""Prepaid VoIP credits: card payments, a credit ledger, call charging and the privacy promises around them."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.sessions import SecureCookieSessionInterface


def create_app(cfg: Any = None, **overrides: Any) -> Flask:
    """Build the Flask app: settings (validated), database, error mapping, blueprints, CLI.

    Nothing here starts a thread, a scheduler or a network client: the jobs process is `flask jobs run`.
    """
    from credits import cli, config, db
    from credits import logging as logs
    from credits.web import errors, health, request_log

    settings = cfg if cfg is not None else config.Config.from_env(**overrides)
    config.install(settings)
    logs.configure(settings.log_level, fmt=settings.effective_log_format)
    if settings.database_url.startswith("sqlite:///"):
        from pathlib import Path

        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    database = db.configure(settings.sqlalchemy_url())

    app = Flask(__name__, template_folder=str(config.PROJECT_ROOT / "templates"))
    from credits.web.json_body import JSONProvider

    app.json = JSONProvider(app)  # request bodies the decoder cannot take are a 400 (credits.web.json_body)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        PROPAGATE_EXCEPTIONS=False,
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
    )
    app.session_interface = _SignedCookieSessionOnDemand()
    from credits.web import converters

    converters.register(app)  # before any route: `<int:...>` is a row id, bounded
    app.extensions["credits"] = {"config": settings, "db": database}
    cli.register_migrate(app, str(config.PROJECT_ROOT / "migrations"))  # `flask db ...`; Alembic loaded for it only
    from credits.web.api import init_api

    init_api(app)
    errors.register(app)  # after the Api, so that our problem+json handlers win
    from credits.payments import api as payments_api
    from credits.payments import jobs as _payments_jobs  # noqa: F401 - registers its jobs
    from credits.payments.cli import payments_cli
    from credits.web import card_guard

    card_guard.register(app)  # first before_request hook: card numbers are refused before anything sees them
    from credits.web import text_guard

    text_guard.register(app)  # second: NUL and unpaired surrogates, which no field can hold
    app.register_blueprint(payments_api.hooks)
    app.cli.add_command(payments_cli)
    from credits.web import headers, limits

    headers.register(app, settings)
    limits.init_app(app, settings)
    from credits.web.switch_lane import SwitchLane

    # The switch's authorize and complete, when plain, are served before Flask (credits.web.switch_lane);
    # inside ProxyFix, so that a key's IP allowlist sees the same client address as Flask would.
    app.wsgi_app = SwitchLane(app.wsgi_app, settings)  # type: ignore[method-assign]
    if settings.proxy_count:
        # Only then is X-Forwarded-For believed, and only the hops our own proxies added (J67).
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_count,  # type: ignore[method-assign]
                                x_proto=settings.proxy_count)
    request_log.register(app)
    app.register_blueprint(health.bp)
    from credits.security import views as security_views

    app.register_blueprint(security_views.bp)
    from credits.store.views import bp as store_pages

    app.register_blueprint(store_pages)
    cli.register(app)
    # Feature job modules add their jobs to the table (credits.jobs.register) when imported.
    from credits.notify import jobs as _notify_jobs  # noqa: F401
    return app


class _SignedCookieSessionOnDemand(SecureCookieSessionInterface):
    """Flask's signed-cookie session, built only when the request carries its cookie.

    The app keeps its state in its own cookies and tables (`__Host-session`), not in Flask's `session`; a request
    without Flask's cookie (every API request) gets an empty session without Flask deriving a signing key.
    """

    def open_session(self, app: Flask, request: Any) -> Any:
        if app.config["SESSION_COOKIE_NAME"] not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)
