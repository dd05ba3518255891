"""Card-number guard (CHECKLIST I55, PCI SAQ A): refuse any request field that holds a card number.

A before_request hook, registered first, looks at the URL path (each segment, percent-decoded, once more if
it still holds a "%"), then every JSON value (and key), form field and query parameter, nested at any depth.
A Luhn-valid run of 13-19 digits (spaces or dashes allowed between them, alone or inside text) gets 400
`card_number_refused` before any view, log line or database write sees it. The answer names the field
(`(the URL path)` for the path), never the value; the log line says only that a field was refused.

A refused path is also rewritten in the request (`request.path` and the WSGI environ's PATH_INFO, RAW_URI
and REQUEST_URI; the offending segments become "[redacted]") before the refusal is raised, so that nothing
after the guard sees the number: neither the 404 and error handlers, nor our access line
(credits.web.request_log, which scrubs digit runs anyway), nor gunicorn's access log, which formats
PATH_INFO from the same environ dict after the response (as long as no middleware copies the environ).
Routing has matched the path by then (Flask matches before the first hook), but matching logs nothing.

Not a card number: a run after a "+" (E.164 phone numbers, up to 15 digits, pass Luhn one time in ten).
Exemptions, on purpose:
- `/webhooks/stripe`: the body is verified by its signature against the raw bytes and never holds a card
  number (Stripe sends last4 only); reading it here would be pointless work on the gateway's path.
- The switch API's number fields (`caller`, `callee` in /api/v1/calls/..., /api/v1/cdrs items,
  /api/v1/balance and /api/v1/quote): dialled numbers of up to 20 digits, about one in ten of which passes
  Luhn at 13-19 digits, so a real phone number would be refused. The switch schema accepts only digits with
  an optional `+` there, and the switch is an authenticated machine, not a place where a person types.
- The call id in the path of the switch API's routes (`/api/v1/calls/<call_id>/update` and `.../complete`):
  call ids are made by switches and are often numeric (SBCs, CDR systems), one numeric 13-19 digit id in ten
  passes Luhn, and a refused update or complete would leave a call unbilled. Only the `call_id` of a path
  that matched one of those routes is exempt: any other segment, and any switch-looking path that matched no
  route (a 404), is checked. The `call_id` field of a JSON body (authorize, cdrs items) is still checked.
  The webhook path is not exempt from the path check (`/webhooks/stripe` itself holds no digits).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

from flask import Flask, request

from credits.errors import ValidationError

log = logging.getLogger(__name__)

# A maximal run of digits, each after the first optionally preceded by one space or dash.
_RUN = re.compile(r"[0-9](?:[ -]?[0-9])*")
SWITCH_PATHS = ("/api/v1/calls/", "/api/v1/cdrs", "/api/v1/balance", "/api/v1/quote")
SWITCH_NUMBER_FIELDS = frozenset({"caller", "callee"})
EXEMPT_PATHS = ("/webhooks/stripe",)
#: Routes whose path carries a switch's call id (exempt from the path check, see above).
SWITCH_PATH_RULES = frozenset({"/api/v1/calls/<path:call_id>/update", "/api/v1/calls/<path:call_id>/complete"})
SWITCH_PATH_ARGS = frozenset({"call_id"})
PATH_FIELD = "(the URL path)"
REDACTED_SEGMENT = "[redacted]"


class CardNumberRefused(ValidationError):
    """A request field held what looks like a card number; card data is only ever given to Stripe.js."""

    code = "card_number_refused"
    title = "Card numbers are not accepted here"


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def holds_card_number(text: str) -> bool:
    """True when `text` contains a Luhn-valid run of 13-19 digits (spaces or dashes allowed between digits).

    A run is delimited by anything but a digit, space or dash; longer runs (20+ digits) are not card numbers,
    and neither is a run written after a "+" (an international phone number, such as a profile's phone), nor a
    run glued to a letter: digits inside a hex or base64 token ("9f3a4111111111111111c2") are part of the
    token, and one random 64-hex-digit token in a hundred holds a Luhn-valid 13-19 digit stretch.
    """
    if sum(1 for ch in text if "0" <= ch <= "9") < 13:
        return False
    for match in _RUN.finditer(text):
        before = text[match.start() - 1] if match.start() else ""
        after = text[match.end()] if match.end() < len(text) else ""
        if before == "+":
            continue  # "+<digits>" is a phone number in E.164 notation; no one writes a card number that way
        if before.isalpha() or after.isalpha() or before == "_" or after == "_":
            continue  # part of a token or identifier, not a number someone typed
        digits = match.group().replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and _is_plausible(digits):
            return True
    return False


def _is_plausible(digits: str) -> bool:
    # A run of one repeated digit ("0000000000000") passes Luhn but is no card number (padding, ids).
    return len(set(digits)) > 1


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, text) for every string, number and key in a decoded JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            yield (f"{path}.(a key)" if path else "(a key)"), str(key)
            yield from _walk(item, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, str(value) if isinstance(value, int) else repr(value)


def _exempt(field: str, path: str) -> bool:
    leaf_name = re.sub(r"\[\d+\]", "", field).rsplit(".", 1)[-1]
    if leaf_name == "csrf_token":
        return True  # our own token, echoed back by the form; never typed by anyone
    if not path.startswith(SWITCH_PATHS):
        return False
    leaf = re.sub(r"\[\d+\]", "", field).rsplit(".", 1)[-1]
    return leaf in SWITCH_NUMBER_FIELDS


def fields_of_request() -> Iterator[tuple[str, str]]:
    """Every field of the current request: query parameters, form fields, JSON values and keys."""
    for key, value in request.args.items(multi=True):
        yield "(a query parameter name)", key
        yield key, value
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, value in request.form.items(multi=True):
            yield "(a form field name)", key
            yield key, value
    elif request.is_json or (request.mimetype or "").endswith("+json"):
        body = request.get_json(silent=True, force=True)
        if body is not None:
            yield from _walk(body, "")


def _segment_holds_card_number(segment: str) -> bool:
    if holds_card_number(segment):
        return True
    # Still encoded after the server's decoding ("%2520" arrives as "%20"): look at it decoded once more.
    return "%" in segment and holds_card_number(unquote(segment))


def _exempt_path_segments() -> frozenset[str]:
    """Segments of the current path that are a switch's call id on a route that takes one."""
    rule = request.url_rule
    if rule is None or rule.rule not in SWITCH_PATH_RULES or not request.view_args:
        return frozenset()
    segments: set[str] = set()
    for name, value in request.view_args.items():
        if name in SWITCH_PATH_ARGS:
            segments.update(str(value).split("/"))
    return frozenset(segments)


def refused_path_segments(path: str) -> list[int]:
    """Indexes of the segments of `path` (split on "/") that hold a card number, exempt ones left out."""
    segments = path.split("/")
    if not any(_segment_holds_card_number(segment) for segment in segments):
        return []
    exempt = _exempt_path_segments()
    return [i for i, segment in enumerate(segments) if segment not in exempt and _segment_holds_card_number(segment)]


def _redact_path(refused: list[int]) -> None:
    """Replace the refused segments in the request and its WSGI environ, for everything after the guard."""
    segments = request.path.split("/")
    for i in refused:
        segments[i] = REDACTED_SEGMENT
    redacted = "/".join(segments)
    query = request.environ.get("QUERY_STRING", "")
    request.path = redacted
    request.environ["PATH_INFO"] = redacted
    uri = quote(request.environ.get("SCRIPT_NAME", "") + redacted, safe="/[]") + (f"?{query}" if query else "")
    for key in ("RAW_URI", "REQUEST_URI"):
        if key in request.environ:
            request.environ[key] = uri
    for cached in ("full_path", "url", "base_url"):
        request.__dict__.pop(cached, None)  # computed from the old path, if anything read them already


def refused_field() -> str | None:
    """The first field of the current request that holds a card number, or None.

    A card number in the URL path gives PATH_FIELD, and the path of the request is redacted (see above).
    """
    refused = refused_path_segments(request.path)
    if refused:
        _redact_path(refused)
        return PATH_FIELD
    if request.path.startswith(EXEMPT_PATHS):
        return None
    for field, text in fields_of_request():
        if holds_card_number(text) and not _exempt(field, request.path):
            # The field's name goes into the answer and the log: never let it carry the number itself.
            return "(a field)" if holds_card_number(field) else field
    return None


def register(app: Flask) -> None:
    """Install the guard as the app's first before_request hook."""

    def _guard() -> None:
        field = refused_field()
        if field is not None:
            log.warning("refused a request with a card number in field %r", field[:100])
            raise CardNumberRefused(
                "Card numbers must never be sent to us: enter them only in the card field of the payment page.",
                field=field[:100])

    app.before_request_funcs.setdefault(None, []).insert(0, _guard)
