"""Text guard: refuse request text that no field can hold (NUL characters, unpaired surrogates) with a 400.

PostgreSQL can neither store nor compare text holding NUL: psycopg refuses the parameter, so a NUL that reached a
query was a 500 there (a payment method id or report reference in the path, a transfer's recipient, a credit
note's account), while SQLite stored it. An unpaired surrogate (JSON may write "\\ud800") is no Unicode character:
it cannot be encoded as UTF-8, so hashing, encrypting or storing it failed (a 500 on sign-in with such a
password). No field of this API has a use for either, so a before_request hook, right after the card guard, looks
at the URL path and at every query parameter, form field and JSON value and key (the card guard's
`fields_of_request`), and refuses the first such text with 400 `invalid_input` naming the field, before any view,
service or query sees it. The same rule holds on the SQLite and PostgreSQL backends.

Exempt, as from the card guard: `/webhooks/stripe` (its body is verified by its signature on the raw bytes).
The switch lane takes only requests this guard would pass (`is_text` on its free-text fields).
"""

from __future__ import annotations

import logging

from flask import Flask, request

from credits.errors import ValidationError
from credits.web import card_guard

log = logging.getLogger(__name__)


def is_text(value: str) -> bool:
    """True when `value` holds neither NUL nor an unpaired surrogate: text that every layer can hold."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refused_field() -> str | None:
    """The first field of the current request that holds such text (card_guard.PATH_FIELD for the path), or None."""
    if request.path.startswith(card_guard.EXEMPT_PATHS):
        return None
    if not is_text(request.path):
        return card_guard.PATH_FIELD
    for field, text in card_guard.fields_of_request():
        if not is_text(text):
            return field if is_text(field) else "(a field name)"
    return None


def register(app: Flask) -> None:
    """Install the guard as the before_request hook right after the card guard (call after card_guard.register)."""

    def _guard() -> None:
        field = refused_field()
        if field is not None:
            log.warning("refused a request with a NUL or an unpaired surrogate in field %r", field[:100])
            raise ValidationError("Text may not hold NUL characters or unpaired surrogates.", field=field[:100])

    hooks = app.before_request_funcs.setdefault(None, [])
    hooks.insert(1 if hooks else 0, _guard)
