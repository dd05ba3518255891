"""Structured logs with request ids, scrubbed of secrets and personal data (CHECKLIST O100, O102).

`configure(level, fmt=...)` (called by create_app, never at import) puts one handler on the root logger: JSON
lines (`fmt="json"`, the default, for machines), or one readable line per record (`fmt="text"`, for a person at
a terminal: CREDITS_LOG_FORMAT, text by default in development). Its filter renders each record's message,
removes passwords, tokens, API keys, session ids, card-like numbers, email addresses and phone numbers, and
escapes CR, LF and other control characters, so that a value a client sent can neither leak into the log nor
forge a log line; both formats write what the filter left. The request id comes from a context variable that
the web layer sets per request (this module imports no Flask: jobs and the CLI log through it too).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("credits_request_id", default=None)


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Make `request_id` the id of everything logged in this context (the web layer calls it per request)."""
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The id of the request being served, or None (jobs, CLI)."""
    return _request_id.get()


# ---------------------------------------------------------------- scrubbing

REDACTED = "[redacted]"
_SECRET_NAMES = "|".join((  # noqa: S105 - the names under which secrets travel, not a secret
    "password", "passwd", "pwd", "new_password", "old_password", "current_password", "secret", "client_secret",
    "token", "access_token", "refresh_token", "api_key", "apikey", "x-api-key", "authorization", "cookie",
    "set-cookie", "session", "session_id", "sessionid", "sid", "csrf", "csrf_token", "x-csrf-token", "totp", "otp",
    "mfa_code", "recovery_code", "verification_code", "cvv", "cvc", "card_number", "pan",
))
_KEY_VALUE = re.compile(
    rf"""(?ix)(?<![\w-])(?P<key>["']?(?:{_SECRET_NAMES})["']?)(?P<sep>\s*[:=]\s*)
    (?P<value>"[^"]*"|'[^']*'|(?:bearer\s+|basic\s+)?[^\s"'&,;)}}\]]+)""",
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_PREFIXED = re.compile(
    r"\b(?:csk|cpt)_[A-Za-z0-9_-]{6,}"              # switch API keys, personal API tokens
    r"|\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{6,}"   # Stripe secret and restricted keys
    r"|\bwhsec_[A-Za-z0-9]{6,}"                      # Stripe webhook secrets
    r"|\b(?:pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"  # client secrets of payment and setup intents
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWTs
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\w.])(?:\d[ -]?){12,18}\d(?![\w])")
_INTL_PHONE = re.compile(r"(?<![\w+])(?:\+|00|011)[ -]?\d(?:[ ().-]{0,2}\d){6,14}(?!\d)")
_DIGIT_RUN = re.compile(r"(?<![\w.+])\d{8,15}(?![\w])")
#: Long opaque strings (session ids, reset tokens): base64url runs of 40+ characters with a digit and a letter.
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{40,}"
                     r"(?![A-Za-z0-9_-])")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
#: Seven digits or more, with at most a few separators between them: the least a phone number of the regions
#: below can be. Text without such a run is not handed to phonenumbers' matcher (the costly part of a log line).
_PHONE_CANDIDATE = re.compile(r"\d(?:[ ().\-/]{0,3}\d){6,}")

#: Regions whose national-format numbers (no "+") are recognised; international ones are always found.
PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "SG")


def _phone_spans(text: str, regions: Iterable[str]) -> list[tuple[int, int]]:
    import phonenumbers  # its metadata takes a while to import; most processes never log a phone number

    spans = [(m.start(), m.end()) for m in _INTL_PHONE.finditer(text)]
    for m in _DIGIT_RUN.finditer(text):
        # E.164 digits without their "+" (how switches often send caller ids).
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse("+" + m.group())):
                spans.append((m.start(), m.end()))
        except phonenumbers.NumberParseException:
            pass
    for region in regions:
        try:
            spans += [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region)]
        except Exception:  # noqa: BLE001,S112 - the matcher must never break logging
            continue
    return spans


def _cut(text: str, spans: list[tuple[int, int]], label: str) -> str:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in reversed(merged):
        text = text[:start] + label + text[end:]
    return text


def scrub(text: str, *, regions: Iterable[str] = PHONE_REGIONS) -> str:
    """Replace secrets and personal data in `text` by placeholders. Control characters are left for `escape`."""
    if not text:
        return text
    text = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{REDACTED}", text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PREFIXED.sub(REDACTED, text)
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub("[card]", text)
    if _PHONE_CANDIDATE.search(text):
        text = _cut(text, _phone_spans(text, regions), "[phone]")
    text = _OPAQUE.sub(lambda m: m.group() if _DIGEST.fullmatch(m.group()) else "[token]", text)
    return text


def escape(text: str) -> str:
    """Show CR, LF, tabs and other control characters as escapes (\\r, \\n, \\x1b): one record, one line."""
    named = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
    return _CONTROL.sub(lambda m: named.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                            else f"\\u{ord(m.group()):04x}"), text)


def clean(value: str) -> str:
    """Scrub and escape one string for a log line."""
    return escape(scrub(value))


_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime",
                                                                                  "request_id"}


#: Extra values written as they are; any other (str included) is written as its string, scrubbed first.
_PLAIN = (int, float, bool, type(None))

#: `extra={FIXED_TEXT: True}` declares a record made of fixed text and numbers only: ScrubFilter passes it as is.
FIXED_TEXT = "_credits_fixed_text"


class ScrubFilter(logging.Filter):
    """Renders the message, then scrubs and escapes it, the extra fields and the traceback; adds request_id."""

    def __init__(self, regions: Iterable[str] = PHONE_REGIONS) -> None:
        super().__init__()
        self.regions = tuple(regions)

    def _clean(self, value: str) -> str:
        return escape(scrub(value, regions=self.regions))

    def _clean_lines(self, text: str) -> tuple[str, list[str]]:
        """A traceback scrubbed as a whole: escaped into one line (JSON), and escaped line by line (text)."""
        scrubbed = scrub(text, regions=self.regions)
        return escape(scrubbed), [escape(line) for line in scrubbed.split("\n")]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_credits_scrubbed", False):
            return True
        if getattr(record, FIXED_TEXT, False):
            # The caller built the record from fixed text and numbers only (the switch lane's access lines):
            # there is nothing to scrub or escape.
            record.request_id = current_request_id()
            record._credits_scrubbed = True
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = f"{record.msg!r} (unformattable arguments)"
        record.msg, record.args = self._clean(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text, record._credits_exc_lines = self._clean_lines(record.exc_text)
        record.exc_info = None
        if record.stack_info:
            record.stack_info, record._credits_stack_lines = self._clean_lines(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, self._clean(value))
            elif name not in _STANDARD and not name.startswith("_") and not isinstance(value, _PLAIN):
                # A list, dict, bytes or object would be written as its str(): scrub that string.
                setattr(record, name, self._clean(str(value)))
        record.request_id = current_request_id()
        record._credits_scrubbed = True
        return True


def key_fields(record: logging.LogRecord) -> Iterator[tuple[str, int | float | bool | str | None]]:
    """The record's extra fields (what `extra=` gave, and what ScrubFilter left of it), in the order given:
    numbers, booleans and None as they are, anything else as its string."""
    for name, value in vars(record).items():
        if name not in _STANDARD and not name.startswith("_"):
            yield name, value if isinstance(value, _PLAIN) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        body.update(key_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exception"] = record.exc_text
        return json.dumps(body, ensure_ascii=True, default=str)


#: Marks the lines of a traceback (or stack) under its record in the text format: a line of a traceback, which
#: may quote what a client sent, can never pass for a record of its own.
TRACEBACK_MARK = "  | "
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _text_value(value: int | float | bool | str | None) -> str:
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


class TextFormatter(logging.Formatter):
    """One readable line per record, for a person at a terminal (development):

        22:51:03.123 INFO  credits.request: GET /healthz 200  method=GET path=/healthz status=200 request_id=...

    local time to the millisecond, level, logger, message, then the key fields as key=value (quoted when empty
    or holding a space, a quote or "="; None left out; the request id last). A traceback or stack follows on
    lines of its own, each starting with TRACEBACK_MARK. Like JsonFormatter it writes what ScrubFilter left:
    the same redaction, and no control character (each line of a traceback is escaped on its own).
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = [(name, value) for name, value in key_fields(record) if value is not None]
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            fields.append(("request_id", request_id))
        when = f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d}"  # local time, as a clock shows
        line = f"{when} {record.levelname:<5} {record.name}: {record.getMessage()}"
        if fields:
            line += "  " + " ".join(f"{name}={_text_value(value)}" for name, value in fields)
        exc_lines = getattr(record, "_credits_exc_lines", None)
        if exc_lines is None:  # a record the filter passed as is (FIXED_TEXT)
            if record.exc_info and not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            exc_lines = record.exc_text.split("\n") if record.exc_text else []
        stack_lines = getattr(record, "_credits_stack_lines", None)
        if stack_lines is None:
            stack_lines = record.stack_info.split("\n") if record.stack_info else []
        return "\n".join([line, *(TRACEBACK_MARK + part for part in (*exc_lines, *stack_lines))])


LOG_FORMATS = ("json", "text")
_FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}
_HANDLER_MARK = "_credits_log_handler"


def handler() -> logging.Handler | None:
    """The handler `configure` installed on the root logger, if any."""
    return next((h for h in logging.getLogger().handlers if getattr(h, _HANDLER_MARK, False)), None)


def configure(level: str = "INFO", *, fmt: str = "json", stream: TextIO | None = None,
              regions: Iterable[str] = PHONE_REGIONS) -> logging.Handler:
    """Install (or replace) the handler with the scrub filter on the root logger; return it. Idempotent.

    `fmt`: "json" (JSON lines) or "text" (TextFormatter); anything else is a ValueError.
    """
    if fmt not in _FORMATTERS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    previous = handler()
    if previous is not None:
        root.removeHandler(previous)
        previous.close()
    new = logging.StreamHandler(stream or sys.stderr)
    setattr(new, _HANDLER_MARK, True)
    new.addFilter(ScrubFilter(regions))
    new.setFormatter(_FORMATTERS[fmt]())
    root.addHandler(new)
    root.setLevel(level.upper())
    return new
