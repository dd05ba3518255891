"""Reading JSON request bodies: a body the decoder cannot take is a 400 invalid_input, never a 500.

Python's decoder fails on two kinds of JSON with errors its callers do not expect: nesting deeper than the
interpreter's recursion limit (RecursionError) and integer literals longer than `int()` reads (a ValueError that
is no JSONDecodeError). Both were 500s: in the card guard, which reads every JSON body first (through Flask's
`get_json`), in webargs and in the switch lane. `loads` refuses them, and any body nested deeper than MAX_DEPTH
(no request of ours nests more than a few levels; a deep one would otherwise recurse through every reader after
the decoder), with BodyRefused.

It is the `loads` of the app's JSON provider, so every `request.get_json()` goes through it, and the card guard's
read refuses such a body before any view or webargs (which parses the raw bytes again) sees it. The switch lane
reads its bodies with it too, and leaves a refused one to Flask. Bodies that are simply not JSON are still
`json.JSONDecodeError`s, for the callers to handle as before.
"""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider

from credits.errors import ValidationError

#: Deepest nesting of arrays and objects accepted in a request body.
MAX_DEPTH = 64
#: Longest integer literal accepted: Python's own limit for int() from a string (sys.int_info).
MAX_INT_DIGITS = 4300


class BodyRefused(ValidationError):
    """A JSON body nested too deeply or holding a number too long to read."""


def _int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise BodyRefused(f"the JSON body holds a number of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _too_deep(value: Any) -> bool:
    """True when `value` nests arrays and objects deeper than MAX_DEPTH (iterative: no recursion to run out of)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def loads(data: str | bytes, **kwargs: Any) -> Any:
    """Decode a JSON body. Raises BodyRefused (too deep, too long a number) and json.JSONDecodeError (not JSON)."""
    kwargs.setdefault("parse_int", _int)
    try:
        value = json.loads(data, **kwargs)
    except RecursionError as exc:
        raise BodyRefused(f"the JSON body is nested deeper than {MAX_DEPTH} levels") from exc
    if isinstance(value, dict | list) and _too_deep(value):
        raise BodyRefused(f"the JSON body is nested deeper than {MAX_DEPTH} levels")
    return value


class JSONProvider(DefaultJSONProvider):
    """Flask's default JSON provider, reading with `loads` above (writing is unchanged)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)
