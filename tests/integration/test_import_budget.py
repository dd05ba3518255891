"""Start-up budget: what creating the app may import, and that an operator command starts without the web side.

Each check runs in a fresh interpreter (the test process has imported everything long ago) that records, for
every forbidden module it imports, the chain of modules that imported it. The lists are short on purpose: the
heavy libraries that are only needed where they are used (docs/ARCHITECTURE.md, section 8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from credits.config import PROJECT_ROOT

#: Never imported by create_app(), in either mode: each is imported where it is used.
CREATE_APP_FORBIDDEN = (
    "stripe",  # the gateway library (about 0.25 s): when a payment is made (credits.payments.stripe_gateway)
    "alembic",  # with Flask-Migrate (about 0.3 s): by the `flask db` commands only (credits.cli.register_migrate)
    "flask_migrate",
    "phonenumbers",  # its metadata: when a caller number is registered or a log line may hold a phone number
    "zxcvbn",  # its dictionaries: when a password is chosen
    "cryptography",  # AES-GCM: when an encrypted value is first sealed or opened
)
#: Not imported either by an operator command that never touches HTTP (`flask --app wsgi ledger audit`): the
#: web side is built on first use there (credits.create_app, defer_web), and these are the API layer and every
#: feature's schema module.
CLI_FORBIDDEN = (*CREATE_APP_FORBIDDEN, "marshmallow", "flask_smorest", "apispec", "webargs")

pytestmark = pytest.mark.slow

#: Prepended to each child's code: records who imported each forbidden module, dumps it at exit to REPORT.
SPY = r'''
import atexit, json, os, sys

FORBIDDEN = set(json.loads(os.environ["FORBIDDEN"]))
found = {}


class Spy:
    """Sees every import first; for a forbidden module, keeps the chain of modules importing it."""

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in FORBIDDEN and top not in found:
            chain, frame = [], sys._getframe(1)
            while frame is not None and len(chain) < 12:
                module = frame.f_globals.get("__name__", "?")
                if not frame.f_code.co_filename.startswith("<frozen") and (not chain or chain[-1] != module):
                    chain.append(module)
                frame = frame.f_back
            found[top] = f"{name} <- " + " <- ".join(chain)
        return None


sys.meta_path.insert(0, Spy())


def dump(**extra):
    with open(os.environ["REPORT"], "w") as f:
        json.dump({"found": found, **extra}, f)
'''


def _run(code: str, forbidden: tuple[str, ...], tmp_path: Path, env: dict[str, str] | None = None,
         ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp_path / "report.json"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITS_", "FLASK_"))}
    child_env.update(env or {}, FORBIDDEN=json.dumps(forbidden), REPORT=str(report), CREDITS_ENV="test")
    proc = subprocess.run([sys.executable, "-c", SPY + code], cwd=PROJECT_ROOT, env=child_env,
                          capture_output=True, text=True, timeout=120)
    assert report.exists(), f"the child did not report (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc, json.loads(report.read_text())


def _offenders(found: dict[str, str]) -> str:
    return "imported at start (module <- who imported it):\n" + "\n".join(f"  {v}" for v in found.values())


@pytest.mark.parametrize("gateway", ["fake", "stripe"])
def test_create_app_imports_nothing_on_the_forbidden_list(tmp_path, gateway):
    """create_app() with the test settings, also with Stripe as the configured gateway."""
    env = {"CREDITS_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}"}
    if gateway == "stripe":
        env.update(CREDITS_PAYMENT_GATEWAY="stripe", CREDITS_STRIPE_SECRET_KEY="sk_test_budget",
                   CREDITS_STRIPE_PUBLISHABLE_KEY="pk_test_budget", CREDITS_STRIPE_WEBHOOK_SECRET="whsec_budget")
    code = (
        "from credits import create_app\n"
        "app = create_app()\n"
        "dump(app=type(app).__name__, routes=len(list(app.url_map.iter_rules())))\n"
    )
    proc, report = _run(code, CREATE_APP_FORBIDDEN, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert report["found"] == {}, _offenders(report["found"])
    assert report["app"] == "Flask" and report["routes"] > 50  # the whole app, web side and all


def test_an_operator_command_starts_without_the_web_side(tmp_path):
    """`flask --app wsgi ledger audit` as an operator runs it: Flask's own CLI entry point, on a migrated database."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrated = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=PROJECT_ROOT,
                              env={**os.environ, "CREDITS_ENV": "test", "CREDITS_DATABASE_URL": url},
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    code = (
        "import sys\n"
        "from flask.cli import main\n"
        "sys.argv = ['flask', '--app', 'wsgi', 'ledger', 'audit']\n"
        "def at_exit():\n"
        "    app = sys.modules['wsgi'].app\n"
        "    dump(app=type(app).__name__, deferred=app.web_deferred)\n"
        "atexit.register(at_exit)\n"
        "main()\n"
    )
    proc, report = _run(code, CLI_FORBIDDEN, tmp_path, {"CREDITS_DATABASE_URL": url})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no violations" in proc.stdout
    assert report["found"] == {}, _offenders(report["found"])
    assert report["app"] == "_DeferredWebApp" and report["deferred"] is True


def test_gunicorn_gets_the_whole_app(tmp_path):
    """`gunicorn wsgi:app` imports wsgi outside the flask command: the web side is built at once."""
    code = "import wsgi\ndump(app=type(wsgi.app).__name__, routes=len(list(wsgi.app.url_map.iter_rules())))\n"
    proc, report = _run(code, (), tmp_path, {"CREDITS_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}"})
    assert proc.returncode == 0, proc.stderr
    assert report["app"] == "Flask" and report["routes"] > 50


#: Builds the app both ways in one child and describes each: everything the web side sets up, in order.
DESCRIBE = r'''
from credits import create_app, OPENAPI_HELP


def names(funcs):
    return [f"{f.__module__}.{f.__qualname__}" if hasattr(f, "__qualname__") else repr(f).split(" at ")[0]
            for f in funcs]


def describe(app):
    layers, layer = [], app.wsgi_app
    while not hasattr(layer, "__self__"):  # down to Flask's own wsgi_app (a bound method)
        layers.append(type(layer).__name__)
        layer = getattr(layer, "inner", None) or layer.app  # the switch lane's, ProxyFix's
    return {
        "rules": sorted([r.rule, sorted(r.methods or ()), r.endpoint] for r in app.url_map.iter_rules()),
        "converters": sorted(f"{k}={v.__name__}" for k, v in app.url_map.converters.items()),
        "views": sorted(app.view_functions),
        "blueprints": list(app.blueprints),
        "before": {str(k): names(v) for k, v in app.before_request_funcs.items()},
        "after": {str(k): names(v) for k, v in app.after_request_funcs.items()},
        "teardown": {str(k): names(v) for k, v in app.teardown_request_funcs.items()},
        "errors": {str(k): {str(c): sorted(e.__name__ for e in h) for c, h in v.items()}
                   for k, v in app.error_handler_spec.items()},
        "filters": sorted(app.jinja_env.filters),
        "extensions": sorted(app.extensions),
        "config": sorted(f"{k}={v!r}" for k, v in app.config.items() if not k.startswith("RATELIMIT_STORAGE")),
        "layers": layers,
        "wsgi": type(app.wsgi_app).__name__,
        "commands": sorted(app.cli.commands),
        "help": {n: c.get_short_help_str(200) for n, c in sorted(app.cli.commands.items())},
    }


eager = describe(create_app())
deferred_app = create_app(defer_web=True)
was_deferred = deferred_app.web_deferred
deferred = describe(deferred_app)  # reading url_map builds the web side

import flask_migrate.cli
import flask_smorest.spec
dump(eager=eager, deferred=deferred, was_deferred=was_deferred, openapi_help=OPENAPI_HELP,
     real_openapi_help=flask_smorest.spec.openapi_cli.help, db_help=flask_migrate.cli.db.help,
     lazy_db_help=eager["help"]["db"])
'''


def test_the_deferred_web_side_is_the_same_app(tmp_path):
    """Once built, the deferred app's routes, hooks (in order), error handlers, template filters, extensions,
    settings, WSGI layers and commands are those of create_app() itself; the stand-in groups have the real help."""
    proc, report = _run(DESCRIBE, (), tmp_path, {"CREDITS_DATABASE_URL": f"sqlite:///{tmp_path / 'same.db'}"})
    assert proc.returncode == 0, proc.stderr
    assert report["was_deferred"] is True
    eager, deferred = report["eager"], report["deferred"]
    for key in eager:
        assert deferred[key] == eager[key], key
    assert len(eager["rules"]) > 50 and eager["before"]["None"][0] == "credits.web.card_guard.register.<locals>._guard"
    assert report["openapi_help"] == report["real_openapi_help"]
    assert report["db_help"] == report["lazy_db_help"]


#: Each way in to the web side, on a fresh deferred app: it must build it first.
TRIGGERS = r'''
import io
from credits import create_app


def start_response(status, headers, exc_info=None):
    return lambda data: None


def wsgi_call(app):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()}
    return b"".join(app(environ, start_response)).decode()


def openapi_command(app):
    return app.test_cli_runner().invoke(args=["openapi", "print"]).output


def render(app):
    with app.app_context():
        return app.jinja_env.get_template("store/login.html") is not None and "money" in app.jinja_env.filters


WAYS = {
    "request": wsgi_call,
    "wsgi_app": lambda app: type(app.wsgi_app).__name__,
    "test_client": lambda app: app.test_client().get("/healthz").status_code,
    "test_request_context": lambda app: app.test_request_context("/login").__enter__() is not None,
    "url_map": lambda app: len(list(app.url_map.iter_rules())),
    "view_functions": lambda app: "store.login" in app.view_functions,
    "blueprints": lambda app: "store" in app.blueprints,
    "template": render,
    "openapi": openapi_command,
}
results = {}
for name, way in WAYS.items():
    app = create_app(defer_web=True)
    before = app.web_deferred
    value = way(app)
    results[name] = {"before": before, "after": app.web_deferred, "value": str(value)[:1000]}
dump(results=results)
'''


def test_every_way_into_the_web_side_builds_it_first(tmp_path):
    proc, report = _run(TRIGGERS, (), tmp_path, {"CREDITS_DATABASE_URL": f"sqlite:///{tmp_path / 'trig.db'}"})
    assert proc.returncode == 0, proc.stderr
    results = report["results"]
    for name, result in results.items():
        assert result["before"] is True and result["after"] is False, (name, result)
    assert '"status"' in results["request"]["value"] and results["test_client"]["value"] == "200"
    assert results["template"]["value"] == "True" and results["wsgi_app"]["value"] == "SwitchLane"
    assert '"title": "Prepaid VoIP credits API"' in results["openapi"]["value"]


def test_the_web_side_is_built_once_and_a_failed_build_is_not_served():
    """In process, with a stand-in build: threads arriving together wait for one build; a build that failed
    fails every later use too, rather than leave a half-built app serving."""
    import threading
    import time

    from credits import _DeferredWebApp

    calls: list[str] = []

    def slow_build() -> None:
        calls.append(threading.current_thread().name)
        time.sleep(0.2)
        app.add_url_rule("/built", "built", lambda: "ok")  # re-enters url_map from the building thread

    app = _DeferredWebApp("credits")
    app.defer_web(slow_build)
    seen: list[bool] = []
    threads = [threading.Thread(target=lambda: seen.append("built" in app.view_functions)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and seen == [True] * 4 and not app.web_deferred

    def broken_build() -> None:
        raise ValueError("a bug in the web side")

    broken = _DeferredWebApp("credits")
    broken.defer_web(broken_build)
    with pytest.raises(ValueError):
        broken.test_client()
    with pytest.raises(RuntimeError, match="web side failed") as later:
        _ = broken.url_map
    assert isinstance(later.value.__cause__, ValueError)
