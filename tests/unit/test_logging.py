"""Structured logging (credits.logging): JSON lines, request ids, scrubbing of secrets and personal data (O100),
escaping of CR/LF and control characters (O102)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from credits import logging as logs


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
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_credits_json_handler", False)]
        assert ours == [two] and one is not two
    finally:
        for h in [h for h in logging.getLogger().handlers if getattr(h, "_credits_json_handler", False)]:
            logging.getLogger().removeHandler(h)
        if before is not None:
            logging.getLogger().addHandler(before)


def test_a_bad_format_string_does_not_lose_the_record(capture):
    logging.getLogger("credits.test").info("needs %s and %s", "one")
    [record] = capture()
    assert "unformattable" in record["message"]
