"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""

import sys

import click
from flask.cli import FlaskGroup

from credits import create_app
from credits.errors import ConfigError


def _loaded_by_flask_command() -> bool:
    """True when the `flask` command is importing this module to run one of its commands.

    An operator command then gets the app with its web side built on first use (credits.create_app, defer_web):
    a command that serves or inspects HTTP builds it, the others start without importing it. gunicorn, and
    any other importer, get the whole app at once.
    """
    ctx = click.get_current_context(silent=True)
    return ctx is not None and isinstance(ctx.find_root().command, FlaskGroup)


try:
    app = create_app(defer_web=_loaded_by_flask_command())
except ConfigError as exc:
    # Refuse to start with one readable line rather than a traceback (gunicorn and the CLI both import this).
    print(f"credits: {exc.message}", file=sys.stderr)  # noqa: T201
    raise SystemExit(2) from None
