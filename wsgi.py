"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""

import sys

from credits import create_app
from credits.errors import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # Refuse to start with one readable line rather than a traceback (gunicorn and the CLI both import this).
    print(f"credits: {exc.message}", file=sys.stderr)  # noqa: T201
    raise SystemExit(2) from None
