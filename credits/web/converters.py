"""URL converters: `<int:...>` bounded to what a row id can be.

Werkzeug's `int` matches any run of digits, so `/purchases/99999999999999999999` reached the view and the
database refused the number (PostgreSQL: out of range for bigint; SQLite: too large for INTEGER): a 500 for
a page that simply does not exist. Installed in place of `int` before any route is added, this converter
matches at most 19 digits up to 2**63 - 1 (BIGINT), so anything larger is a 404 like any unknown id, and the
OpenAPI document states the bound.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.routing import IntegerConverter, Map

from credits.db import MAX_ROW_ID


class RowIdConverter(IntegerConverter):
    regex = r"\d{1,19}"

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002 - werkzeug's names
                 max: int | None = MAX_ROW_ID, signed: bool = False) -> None:  # noqa: A002
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


def register(app: Flask) -> None:
    """Install the bounded `int` converter; call before any blueprint or route is added."""
    app.url_map.converters["int"] = RowIdConverter
