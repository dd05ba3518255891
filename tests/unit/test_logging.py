"""Structured logging (credits.logging): JSON lines, request ids, scrubbing of secrets and personal data (O100),
escaping of CR/LF and control characters (O102); the text format (CREDITS_LOG_FORMAT=text) and its setting."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from credits import logging as logs
from credits.config import Config
from credits.errors import ConfigError


@pytest.fixture
def capture():
    """The JSON handler writing into a buffer; yields a function returning the records written so far."""
    buffer = io.StringIO()
    previous = logs.handler()
    handler = logs.configure("DEBUG", stream=buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    logging.getLogger().removeHandler(handler)
    if previous is not None:
        logging.getLogger().addHandler(previous)


SECRETS = {
    "password=correct-horse-battery": "correct-horse-battery",
    '{"password": "hunter2hunter2"}': "hunter2hunter2",
    "Authorization: Bearer cpt_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5": "cpt_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5",
    "switch key csk_live_8f7d6e5c4b3a2910 refused": "csk_live_8f7d6e5c4b3a2910",
    "cookie __Host-session=Yp3kQ9xV2mL8rT4wZ1nB6cF0hJ5sD7gA3eU9iO2pK4q": "Yp3kQ9xV2mL8rT4wZ1nB6cF0hJ5sD7gA3eU9iO2pK4q",
    "reset link /reset-password?token=abcDEF123456": "abcDEF123456",
    "totp=123456 accepted": "123456",
    "session Yp3kQ9xV2mL8rT4wZ1nB6cF0hJ5sD7gA3eU9iO2pK4q seen": "Yp3kQ9xV2mL8rT4wZ1nB6cF0hJ5sD7gA3eU9iO2pK4q",
    "stripe sk_test_51Hxyzabcdefghijkl failed": "sk_test_51Hxyzabcdefghijkl",
    "intent pi_3Nabc_secret_XYZ987 created": "pi_3Nabc_secret_XYZ987",
    "card 4242 4242 4242 4242 declined": "4242 4242 4242 4242",
    "pan 4000056655665556": "4000056655665556",
    "customer alice.smith@example.com signed up": "alice.smith@example.com",
    "caller +6561234567 authorised": "+6561234567",
    "callee 14155550100 refused": "14155550100",
    "caller 6561234567 (no plus)": "6561234567",
    "callback (415) 555-0199 requested": "(415) 555-0199",
    "intl 0044 20 7946 0958": "0044 20 7946 0958",
}


@pytest.mark.parametrize("text,secret", SECRETS.items())
def test_O100_scrub_removes_secrets_and_personal_data(text, secret):
    assert secret not in logs.scrub(text)


def test_O100_scrub_keeps_what_operators_need():
    line = ("POST /api/v1/calls/a84b4c76e66710@10.0.0.1/complete 200 charged 0.024000 USD, wallet 17, "
            "request 0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert logs.scrub(line) == line
    digest = "ab" * 32
    assert logs.scrub(f"session hash {digest}") == f"session hash {digest}"  # hashed ids may appear


def test_O100_records_are_scrubbed_in_message_args_extras_and_tracebacks(capture):
    log = logging.getLogger("credits.test")
    log.warning("login failed for %s with password=%s", "bob@example.com", "s3cret-pass",
                extra={"caller": "+6561234567", "wallet_id": 7})
    try:
        raise ValueError("bad card 4111111111111111 for carol@example.com")
    except ValueError:
        log.exception("purchase failed")
    first, second = capture()
    text = json.dumps([first, second])
    for secret in ("bob@example.com", "s3cret-pass", "+6561234567", "4111111111111111", "carol@example.com"):
        assert secret not in text
    assert first["message"] == "login failed for [email] with password=[redacted]"
    assert first["caller"] == "[phone]" and first["wallet_id"] == 7
    assert "ValueError: bad card [card] for [email]" in second["exception"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_O100_extras_that_are_not_strings_are_scrubbed_as_the_strings_written(fmt):
    buffer = io.StringIO()
    previous = logs.handler()
    handler = logs.configure("INFO", fmt=fmt, stream=buffer)
    try:
        logging.getLogger("credits.test").info("payload", extra={
            "emails": ["bob@example.com"], "body": {"password": "hunter2hunter2"}, "raw": b"4111111111111111",
            "lines": ("one", "two\nthree"), "count": 3, "ratio": 0.5, "ok": True})
    finally:
        logging.getLogger().removeHandler(handler)
        if previous is not None:
            logging.getLogger().addHandler(previous)
    out = buffer.getvalue()
    for secret in ("bob@example.com", "hunter2hunter2", "4111111111111111"):
        assert secret not in out
    assert "[email]" in out and "[redacted]" in out and "[card]" in out and out.count("\n") == 1
    if fmt == "json":
        record = json.loads(out)
        assert (record["count"], record["ratio"], record["ok"]) == (3, 0.5, True)  # numbers stay numbers
        assert record["lines"] == str(("one", "two\nthree"))  # the string written, as str() gives it


def test_O102_cr_lf_and_control_characters_are_escaped(capture):
    log = logging.getLogger("credits.test")
    forged = 'alice\r\n{"level": "INFO", "message": "admin logged in"}\x1b[31m\x00'
    log.info("login attempt for user %s", forged, extra={"user_agent": "curl\nX-Forged: 1"})
    buffer = capture()
    assert len(buffer) == 1  # one record, one line: nothing forged
    [record] = buffer
    assert "\\r\\n" in record["message"] and "\n" not in record["message"] and "\r" not in record["message"]
    assert "\\x1b[31m\\x00" in record["message"]
    assert record["user_agent"] == "curl\\nX-Forged: 1"
    assert logs.escape("a\u2028b\u0085c\x7f") == "a\\u2028b\\x85c\\x7f"


def test_records_are_json_with_request_id(capture):
    token = logs.set_request_id("req-1234abcd")
    try:
        logging.getLogger("credits.test").info("hello %s", "world")
    finally:
        logs.reset_request_id(token)
    logging.getLogger("credits.test").info("outside")
    inside, outside = capture()
    assert inside["request_id"] == "req-1234abcd" and inside["message"] == "hello world"
    assert inside["level"] == "INFO" and inside["logger"] == "credits.test" and inside["time"].endswith("+00:00")
    assert outside["request_id"] is None


def test_configure_is_idempotent():
    before = logs.handler()
    try:
        one = logs.configure("INFO", stream=io.StringIO())
        two = logs.configure("INFO", stream=io.StringIO())
        three = logs.configure("INFO", fmt="text", stream=io.StringIO())
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_credits_log_handler", False)]
        assert ours == [three] and len({id(one), id(two), id(three)}) == 3 and logs.handler() is three
    finally:
        for h in [h for h in logging.getLogger().handlers if getattr(h, "_credits_log_handler", False)]:
            logging.getLogger().removeHandler(h)
        if before is not None:
            logging.getLogger().addHandler(before)


def test_a_bad_format_string_does_not_lose_the_record(capture):
    logging.getLogger("credits.test").info("needs %s and %s", "one")
    [record] = capture()
    assert "unformattable" in record["message"]


# ---------------------------------------------------------------- the text format


@pytest.fixture
def text_capture():
    """The text handler writing into a buffer; yields a function returning what it wrote so far."""
    buffer = io.StringIO()
    previous = logs.handler()
    handler = logs.configure("DEBUG", fmt="text", stream=buffer)
    yield buffer.getvalue
    logging.getLogger().removeHandler(handler)
    if previous is not None:
        logging.getLogger().addHandler(previous)


LINE = re.compile(r"(?P<time>\d\d:\d\d:\d\d\.\d{3}) (?P<level>[A-Z]+) +(?P<logger>\S+): (?P<rest>.*)")


def test_text_line_has_time_level_logger_message_and_key_fields(text_capture):
    token = logs.set_request_id("req-1234abcd")
    try:
        logging.getLogger("credits.request").info("GET %s %s", "/healthz", 200, extra={
            "method": "GET", "path": "/healthz", "status": 200, "duration_ms": 1.5, "cached": False,
            "note": "two words", "empty": "", "nothing": None})
    finally:
        logs.reset_request_id(token)
    logging.getLogger("credits.jobs").warning("outside a request")
    first, second = text_capture().splitlines()
    match = LINE.fullmatch(first)
    assert match, first
    assert (match["level"], match["logger"]) == ("INFO", "credits.request")
    assert match["rest"] == ('GET /healthz 200  method=GET path=/healthz status=200 duration_ms=1.5 cached=False '
                             'note="two words" empty="" request_id=req-1234abcd')  # None left out, request id last
    assert LINE.fullmatch(second) and second.endswith(" WARNING credits.jobs: outside a request")


def test_text_line_time_is_local_time_to_the_millisecond():
    record = logging.LogRecord("credits.test", logging.INFO, __file__, 1, "hello", None, None)
    record.created, record.msecs = 1_800_000_000.25, 250.0
    from datetime import UTC, datetime

    expected = datetime.fromtimestamp(1_800_000_000.25, UTC).astimezone().strftime("%H:%M:%S") + ".250"
    assert logs.TextFormatter().format(record) == f"{expected} INFO  credits.test: hello"


def test_O100_text_lines_are_scrubbed_like_json_lines(text_capture):
    log = logging.getLogger("credits.test")
    log.warning("login failed for %s with password=%s", "bob@example.com", "s3cret-pass",
                extra={"caller": "+6561234567", "wallet_id": 7, "card": "4111 1111 1111 1111"})
    for text, secret in SECRETS.items():
        log.info("seen: %s", text, extra={"detail": text})
        assert secret not in text_capture()
    out = text_capture()
    for secret in ("bob@example.com", "s3cret-pass", "+6561234567", "4111 1111 1111 1111"):
        assert secret not in out
    first = out.splitlines()[0]
    assert first.endswith(": login failed for [email] with password=[redacted]  caller=[phone] wallet_id=7 "
                          "card=[card]"), first


def test_O102_text_lines_escape_cr_lf_and_control_characters(text_capture):
    forged = "alice\r\n12:00:00.000 INFO  credits.auth: admin logged in\x1b[31m\x00"
    logging.getLogger("credits.test").info("login attempt for user %s", forged,
                                           extra={"user_agent": 'curl\nX-Forged: "1"'})
    [line] = text_capture().splitlines()  # one record, one line: nothing forged
    assert "alice\\r\\n12:00:00.000 INFO  credits.auth: admin logged in\\x1b[31m\\x00" in line
    assert "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert line.endswith(' user_agent="curl\\nX-Forged: \\"1\\""')


def test_text_format_renders_the_traceback_after_the_line_scrubbed_and_marked(text_capture):
    log = logging.getLogger("credits.payments")
    try:
        try:
            raise KeyError("the cause")
        except KeyError as exc:
            raise ValueError("bad card 4111111111111111 for carol@example.com\n12:00:00.000 INFO  x: forged") \
                from exc
    except ValueError:
        log.exception("purchase %s failed", 42, extra={"purchase_id": 42})
    log.info("next")
    lines = text_capture().splitlines()
    assert LINE.fullmatch(lines[0]) and lines[0].endswith(" ERROR credits.payments: purchase 42 failed  purchase_id=42")
    traceback = lines[1:-1]
    assert traceback[0] == "  | Traceback (most recent call last):"
    assert all(line.startswith(logs.TRACEBACK_MARK) for line in traceback)  # none passes for a record
    text = "\n".join(traceback)
    assert "KeyError: 'the cause'" in text and "The above exception was the direct cause" in text
    assert "  | ValueError: bad card [card] for [email]" in text and "  | 12:00:00.000 INFO  x: forged" in text
    assert "4111111111111111" not in text and "carol@example.com" not in text
    assert LINE.fullmatch(lines[-1]) and lines[-1].endswith(": next")


def test_text_format_renders_a_stack_and_the_traceback_of_a_fixed_text_record(text_capture):
    log = logging.getLogger("credits.test")
    log.info("where am I", stack_info=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("fixed", extra={"status": 500, logs.FIXED_TEXT: True})
    lines = text_capture().splitlines()
    assert lines[0].endswith(": where am I") and lines[1] == "  | Stack (most recent call last):"
    fixed = next(i for i, line in enumerate(lines) if line.endswith(": fixed  status=500"))
    assert lines[fixed + 1] == "  | Traceback (most recent call last):" and lines[-1] == "  | RuntimeError: boom"


def test_the_traceback_in_json_is_unchanged_one_escaped_string(capture):
    try:
        raise ValueError("one\ntwo for carol@example.com")
    except ValueError:
        logging.getLogger("credits.test").exception("failed")
    [record] = capture()
    assert record["exception"].startswith("Traceback (most recent call last):\\n")
    assert record["exception"].endswith("ValueError: one\\ntwo for [email]") and "\n" not in record["exception"]
    assert not any(key.startswith("_") for key in record)


def test_configure_refuses_an_unknown_format():
    before = logs.handler()
    with pytest.raises(ValueError, match="json, text"):
        logs.configure("INFO", fmt="yaml", stream=io.StringIO())
    assert logs.handler() is before


# ---------------------------------------------------------------- CREDITS_LOG_FORMAT


@pytest.mark.parametrize("env,expected", [("development", "text"), ("test", "json")])
def test_log_format_defaults_to_text_in_development_and_json_elsewhere(env, expected):
    assert Config.from_env({"CREDITS_ENV": env}).effective_log_format == expected
    assert Config.from_env({"CREDITS_ENV": env, "CREDITS_LOG_FORMAT": ""}).effective_log_format == expected


def test_log_format_defaults_to_json_in_production():
    cfg = Config(env="production", log_format="")
    assert cfg.effective_log_format == "json"
    assert "CREDITS_LOG_FORMAT" not in "; ".join(cfg._general_problems())


@pytest.mark.parametrize("env", ["development", "test", "production"])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_explicit_log_format_wins(env, fmt):
    cfg = Config(env=env, log_format=fmt)
    assert cfg.effective_log_format == fmt
    assert "CREDITS_LOG_FORMAT" not in "; ".join(cfg._general_problems())
    if env != "production":
        assert Config.from_env({"CREDITS_ENV": env, "CREDITS_LOG_FORMAT": fmt}).effective_log_format == fmt


@pytest.mark.parametrize("bad", ["yaml", "JSON", "Text", " text", "json,text"])
def test_a_bad_log_format_stops_the_service_naming_the_setting(bad):
    with pytest.raises(ConfigError, match=r"CREDITS_LOG_FORMAT must be json or text"):
        Config.from_env({"CREDITS_ENV": "development", "CREDITS_LOG_FORMAT": bad})
