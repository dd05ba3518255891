"""Prepaid VoIP credits: card payments, a credit ledger, call charging and the privacy promises around them."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.sessions import SecureCookieSessionInterface


def create_app(cfg: Any = None, *, defer_web: bool = False, **overrides: Any) -> Flask:
    """Build the Flask app: settings (validated), database, models, CLI and jobs; then its web side: the API,
    pages, request hooks, error mapping and WSGI layers.

    With `defer_web` (what `flask --app wsgi COMMAND` gets: wsgi.py) the web side is built on its first use
    instead (_DeferredWebApp): serving a request, a test client or request context, reading the app's
    url_map, view_functions or blueprints, its Jinja environment (templates), or the `openapi` commands. An
    operator command that never touches HTTP then starts without importing it, and one that does sees the
    same app.

    Nothing here starts a thread, a scheduler or a network client: the jobs process is `flask jobs run`.
    """
    from credits import cli, config, db
    from credits import logging as logs

    settings = cfg if cfg is not None else config.Config.from_env(**overrides)
    config.install(settings)
    logs.configure(settings.log_level, fmt=settings.effective_log_format)
    if settings.database_url.startswith("sqlite:///"):
        from pathlib import Path

        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    database = db.configure(settings.sqlalchemy_url())
    # Every model: an ORM flush resolves its table's foreign keys, which may name another feature's table.
    from credits import models as _models  # noqa: F401

    app_class = _DeferredWebApp if defer_web else Flask
    app = app_class(__name__, template_folder=str(config.PROJECT_ROOT / "templates"))
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
    from credits.payments.cli import payments_cli

    app.cli.add_command(payments_cli)
    cli.register(app)
    # Feature job modules add their jobs to the table (credits.jobs.register) when imported; `jobs list` shows
    # them in that order.
    for feature_jobs in ("credits.payments.jobs", "credits.notify.jobs"):  # payments: also its ledger audit check
        importlib.import_module(feature_jobs)

    if isinstance(app, _DeferredWebApp):
        app.defer_web(lambda: _build_web(app, settings))
    else:
        _build_web(app, settings)
    return app


def _build_web(app: Flask, settings: Any) -> None:
    """The web side of the app: API, pages, webhooks, request hooks (in this order), error mapping, WSGI layers."""
    from credits.web import errors, health, request_log
    from credits.web.api import init_api

    init_api(app)
    errors.register(app)  # after the Api, so that our problem+json handlers win
    from credits.payments import api as payments_api
    from credits.web import card_guard

    card_guard.register(app)  # first before_request hook: card numbers are refused before anything sees them
    from credits.web import text_guard

    text_guard.register(app)  # second: NUL and unpaired surrogates, which no field can hold
    app.register_blueprint(payments_api.hooks)
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


#: Help of flask-smorest's `openapi` command group, which the deferred app lists before the API is built.
OPENAPI_HELP = "OpenAPI commands."


class _BuiltOnRead:
    """An attribute of a _DeferredWebApp that Flask assigns in __init__: set as usual, but reading it builds the
    web side first (the routes and blueprints it holds are registered there)."""

    def __init__(self, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, app: Any, owner: type | None = None) -> Any:
        if app is None:
            return self
        app.build_web()
        return app.__dict__[self.slot]

    def __set__(self, app: Any, value: Any) -> None:
        app.__dict__[self.slot] = value


class _DeferredWebApp(Flask):
    """A Flask app whose web side (`defer_web(build)`) is built the first time anything needs it.

    Everything that serves or inspects HTTP goes through one of: `wsgi_app` (a request from any server or
    test client), `request_context`/`test_request_context`/`test_client`, `url_map`, `view_functions`,
    `blueprints` (routes, url_for, `flask routes`, the payment-page monitor), `jinja_env` (templates and the
    pages' template filters), the `openapi` command group. Each builds the web side first (once; other threads
    wait for it), so the app then is what create_app builds without `defer_web`.
    """

    _web_build: Callable[[], None] | None = None
    _web_building = False
    _web_failed: BaseException | None = None

    def defer_web(self, build: Callable[[], None]) -> None:
        from credits.cli import LazyGroup

        self._web_lock = threading.RLock()
        self._web_build = build

        def openapi_group() -> Any:
            self.build_web()
            return self.cli.commands["openapi"]

        self.cli.add_command(LazyGroup("openapi", openapi_group, help=OPENAPI_HELP))

    @property
    def web_deferred(self) -> bool:
        """True until the web side is built."""
        return self._web_build is not None

    def build_web(self) -> None:
        """Build the web side now, if it is not built yet. If building it failed, every later use fails too (as
        create_app would have), rather than serve a half-built app."""
        if self._web_build is None and self._web_failed is None:
            return
        with self._web_lock:
            if self._web_failed is not None:
                raise RuntimeError("building the app's web side failed") from self._web_failed
            build = self._web_build
            if build is None or self._web_building:  # built meanwhile, or being built by this very thread
                return
            self._web_building = True
            try:
                build()
            except BaseException as exc:
                self._web_failed = exc
                raise
            finally:
                self._web_building = False
                self._web_build = None

    # Flask sets these three in __init__ and reads them on every request; here the first read builds the rest.
    url_map = _BuiltOnRead("url_map")
    view_functions = _BuiltOnRead("view_functions")
    blueprints = _BuiltOnRead("blueprints")

    # Every request goes through it (Flask's __call__ reads it); the web side wraps it (switch lane, ProxyFix).
    @property
    def wsgi_app(self) -> Any:
        self.build_web()
        return self.__dict__.get("_wsgi_app") or super().wsgi_app

    @wsgi_app.setter
    def wsgi_app(self, value: Any) -> None:
        self.__dict__["_wsgi_app"] = value

    def request_context(self, environ: Any) -> Any:
        self.build_web()
        return super().request_context(environ)

    def test_request_context(self, *args: Any, **kwargs: Any) -> Any:
        self.build_web()
        return super().test_request_context(*args, **kwargs)

    def test_client(self, use_cookies: bool = True, **kwargs: Any) -> Any:
        self.build_web()
        return super().test_client(use_cookies, **kwargs)

    def create_jinja_environment(self) -> Any:
        self.build_web()  # the pages' template filters; registering them makes the environment
        made = self.__dict__.get("jinja_env")  # (Flask's cached_property keeps it there)
        return made if made is not None else super().create_jinja_environment()

    @property
    def debug(self) -> bool:
        return bool(self.config["DEBUG"])

    @debug.setter
    def debug(self, value: bool) -> None:
        # Flask's setter, but it leaves a Jinja environment not made yet alone (Flask's CLI sets debug for every
        # command; making the environment builds the web side): one made later follows DEBUG as this would have.
        self.config["DEBUG"] = value
        if self.config["TEMPLATES_AUTO_RELOAD"] is None and "jinja_env" in self.__dict__:
            self.jinja_env.auto_reload = value


class _SignedCookieSessionOnDemand(SecureCookieSessionInterface):
    """Flask's signed-cookie session, built only when the request carries its cookie.

    The app keeps its state in its own cookies and tables (`__Host-session`), not in Flask's `session`; a request
    without Flask's cookie (every API request) gets an empty session without Flask deriving a signing key.
    """

    def open_session(self, app: Flask, request: Any) -> Any:
        if app.config["SESSION_COOKIE_NAME"] not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)
