"""Email delivery (issue 5, deliverable 6): the outbox sent over SMTP to a real local server (aiosmtpd), retries
with back-off, dead letters, TLS and AUTH, the "this wasn't me" link of security notices, and one Mailer contract
for the SMTP, in-memory and file mailers."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from credits import config
from credits.db import unit_of_work
from credits.notify import delivery, mailer, notices, outbox
from credits.notify.models import OutboxMessage
from tests.integration.smtp_server import SmtpSink, body_html, body_text, free_port, self_signed_cert

LINK = re.compile(r"https?://\S+/security/compromised\?token=[A-Za-z0-9_-]+")


@pytest.fixture
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def settings_overrides(smtp):
    return {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "mail_from": "credits@example.net",
            "public_url": "https://credits.example.net", "mail_max_attempts": 3, "mail_retry_base_s": 60}


def _outbox(database: Any) -> list[Any]:
    with database.engine.connect() as conn:
        return conn.execute(sa.select(OutboxMessage.__table__).order_by(OutboxMessage.id)).all()


def _parsed(path: Any) -> Any:
    """A message the file mailer wrote, read back as a receiving mail system would."""
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def _queue(template: str = "verify_email", to: str = "alice@example.com", **context: Any) -> int:
    context = context or {"link": "https://credits.example.net/verify-email?token=abc",
                          "expires_at": "2026-11-24T12:00:00Z", "name": "Alice"}
    with unit_of_work() as uow:
        message_id = outbox.enqueue(uow.session, template=template, to=to, context=context)
        uow.commit()
    assert message_id is not None
    return message_id


def test_deliver_outbox_job_sends_over_smtp(runner, smtp, database):
    _queue()
    result = runner.invoke(args=["jobs", "run-once", "deliver-outbox"])
    assert result.exit_code == 0, result.output
    assert 'deliver-outbox: {"sent": 1, "retried": 0, "dead": 0}' in result.output
    [message] = smtp.wait_for(1)
    assert smtp.envelopes == [("credits@example.net", ["alice@example.com"])]
    assert message["Subject"] == "Confirm your email address"
    assert message["To"] == "alice@example.com" and message["From"] == "credits@example.net"
    assert "https://credits.example.net/verify-email?token=abc" in body_text(message)
    assert 'href="https://credits.example.net/verify-email?token=abc"' in body_html(message)
    [row] = _outbox(database)
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None) and row.sent_at is not None
    again = runner.invoke(args=["jobs", "run-once", "deliver-outbox"])
    assert '"sent": 0' in again.output and len(smtp.messages) == 1  # sent once


def test_html_part_escapes_what_the_customer_typed(smtp, database):
    _queue(link="https://x.example/v", expires_at="2026-11-24T12:00:00Z", name="<script>alert(1)</script>")
    delivery.deliver_due()
    [message] = smtp.wait_for(1)
    html = body_html(message)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>alert(1)</script>" in body_text(message)  # plain text is not HTML


def test_smtp_down_retried_later_with_back_off_then_delivered(app, database, clock):
    port = free_port()  # nothing listens here yet
    config.install(config.Config(**{**vars(config.current()), "smtp_port": port}))
    _queue()
    assert delivery.deliver_due().as_dict() == {"sent": 0, "retried": 1, "dead": 0}
    [row] = _outbox(database)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at == clock.now() + timedelta(seconds=60)
    assert row.last_error.startswith("MailError: relay unreachable")
    assert delivery.deliver_due().as_dict() == {"sent": 0, "retried": 0, "dead": 0}  # not due yet

    clock.advance(seconds=60)
    assert delivery.deliver_due().retried == 1
    [row] = _outbox(database)
    assert row.attempts == 2 and row.next_attempt_at == clock.now() + timedelta(seconds=120)  # doubled

    sink = SmtpSink(port).start()
    try:
        clock.advance(seconds=120)
        assert delivery.deliver_due().sent == 1
        sink.wait_for(1)
    finally:
        sink.stop()
    [row] = _outbox(database)
    assert (row.status, row.attempts) == ("sent", 3)


def test_after_max_attempts_the_message_is_dead(app, database, clock):
    config.install(config.Config(**{**vars(config.current()), "smtp_port": free_port()}))
    _queue()
    for _ in range(3):
        delivery.deliver_due()
        clock.advance(hours=1)
    [row] = _outbox(database)
    assert (row.status, row.attempts) == ("dead", 3)
    clock.advance(days=1)
    assert delivery.deliver_due().as_dict() == {"sent": 0, "retried": 0, "dead": 0}  # never tried again
    assert _outbox(database)[0].attempts == 3


def test_recipient_refused_for_good_is_dead_at_once_and_error_names_no_address(smtp, database):
    smtp.refuse.add("gone@example.com")
    _queue(to="gone@example.com")
    _queue(to="alice@example.com")
    assert delivery.deliver_due().as_dict() == {"sent": 1, "retried": 0, "dead": 1}
    dead, sent = _outbox(database)
    assert (dead.status, dead.attempts) == ("dead", 1) and "550" in dead.last_error
    assert "gone@example.com" not in dead.last_error
    assert sent.status == "sent"


def test_unknown_template_is_dead_without_a_send(smtp, database):
    _queue(template="no_such_template", to="alice@example.com", x=1)
    assert delivery.deliver_due().dead == 1
    assert _outbox(database)[0].last_error.startswith("TemplateError")
    assert smtp.messages == []


def test_starttls_with_login(tmp_path, app, database):
    cert = self_signed_cert(tmp_path)
    sink = SmtpSink(tls="starttls", cert=cert, users={"relay-user": "relay-pass"}).start()
    try:
        config.install(config.Config(**{**vars(config.current()), "smtp_port": sink.port, "smtp_tls": "starttls",
                                        "smtp_user": "relay-user", "smtp_password": "relay-pass",
                                        "smtp_ca_file": str(cert[0])}))
        _queue()
        assert delivery.deliver_due().sent == 1
        sink.wait_for(1)
        assert sink.logins == ["relay-user"]
    finally:
        sink.stop()


def test_starttls_refuses_an_untrusted_certificate(tmp_path, app, database):
    sink = SmtpSink(tls="starttls", cert=self_signed_cert(tmp_path)).start()
    try:
        config.install(config.Config(**{**vars(config.current()), "smtp_port": sink.port, "smtp_tls": "starttls"}))
        _queue()
        assert delivery.deliver_due().retried == 1  # no CA file: the self-signed relay is not trusted
        assert sink.messages == []
    finally:
        sink.stop()


def test_implicit_tls(tmp_path, app, database):
    cert = self_signed_cert(tmp_path)
    sink = SmtpSink(tls="ssl", cert=cert).start()
    try:
        config.install(config.Config(**{**vars(config.current()), "smtp_port": sink.port, "smtp_tls": "ssl",
                                        "smtp_ca_file": str(cert[0])}))
        _queue()
        assert delivery.deliver_due().sent == 1
        sink.wait_for(1)
    finally:
        sink.stop()


def test_wrong_smtp_password_is_retried_not_dead(tmp_path, app, database):
    cert = self_signed_cert(tmp_path)
    sink = SmtpSink(tls="starttls", cert=cert, users={"relay-user": "relay-pass"}).start()
    try:
        config.install(config.Config(**{**vars(config.current()), "smtp_port": sink.port, "smtp_tls": "starttls",
                                        "smtp_user": "relay-user", "smtp_password": "wrong",
                                        "smtp_ca_file": str(cert[0])}))
        _queue()
        assert delivery.deliver_due().retried == 1  # the operator can fix the password; the mail waits
        row = _outbox(database)[0]
        assert "535" in row.last_error and "wrong" not in row.last_error
    finally:
        sink.stop()


def test_memory_backend_is_chosen_from_config(app, database):
    config.install(config.Config(**{**vars(config.current()), "mail_backend": "memory"}))
    assert mailer.from_config() is mailer.MEMORY
    mailer.MEMORY.clear()
    _queue()
    assert delivery.deliver_due().sent == 1
    assert [m["Subject"] for m in mailer.MEMORY.sent] == ["Confirm your email address"]
    mailer.MEMORY.clear()
    assert isinstance(mailer.from_config(config.Config(mail_backend="smtp")), mailer.SmtpMailer)


def test_file_backend_is_chosen_from_config_and_the_job_writes_the_message(app, database, tmp_path):
    directory = tmp_path / "mail"
    config.install(config.Config(**{**vars(config.current()), "mail_backend": "file", "mail_dir": str(directory)}))
    assert isinstance(mailer.from_config(), mailer.FileMailer)
    _queue()
    assert delivery.deliver_due().as_dict() == {"sent": 1, "retried": 0, "dead": 0}
    [path] = directory.glob("*.eml")
    message = _parsed(path)
    assert (message["To"], message["Subject"]) == ("alice@example.com", "Confirm your email address")
    assert "https://credits.example.net/verify-email?token=abc" in body_text(message)
    assert _outbox(database)[0].status == "sent"


def test_file_mailer_unwritable_directory_is_retried(app, database, tmp_path):
    taken = tmp_path / "mail"
    taken.write_text("")  # a file where the directory should be: the operator can fix that, the mail waits
    _queue()
    assert delivery.deliver_due(mailer=mailer.FileMailer(taken)).as_dict() == {"sent": 0, "retried": 1, "dead": 0}
    assert _outbox(database)[0].last_error.startswith("MailError: mail directory not writable")


def test_memory_mailer_failures_follow_the_same_rules(app, database, clock):
    fake = mailer.MemoryMailer()
    fake.fail_next(mailer.MailError("busy"), times=1)
    fake.fail_next(mailer.MailError("no such user", permanent=True, code=550))
    _queue()
    _queue(to="bob@example.com")
    assert delivery.deliver_due(mailer=fake).as_dict() == {"sent": 0, "retried": 1, "dead": 1}
    clock.advance(minutes=5)
    assert delivery.deliver_due(mailer=fake).sent == 1
    assert [m["To"] for m in fake.sent] == ["alice@example.com"]


# ---------------------------------------------------------------- security notices


def test_security_notice_carries_a_working_wasnt_me_link(smtp, make, database):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        notices.security_notice(uow.session, alice.user_id, "password_changed", how="change")
        uow.commit()
    delivery.deliver_due()
    [message] = smtp.wait_for(1)
    assert message["To"] == "alice@example.com" and message["Subject"] == "Your password was changed"
    [url] = set(LINK.findall(body_text(message)))
    assert url.startswith("https://credits.example.net/security/compromised?token=")
    assert url.replace("&", "&amp;") in body_html(message)
    from credits.security import links

    with unit_of_work() as uow:
        assert links.check(uow.session, url.rpartition("token=")[2]) == alice.user_id
    # The token itself is stored only hashed; the outbox holds it encrypted.
    with database.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM email_tokens")) for v in row)
        stored += " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM outbox")) for v in row)
    assert url.rpartition("token=")[2] not in stored


@pytest.mark.parametrize("kind,context", [
    ("new_sign_in", {"ip_prefix": "203.0.113.0/24", "user_agent": "Firefox", "kind": "web"}),
    ("password_changed", {"how": "reset"}),
    ("mfa_changed", {"change": "disabled"}),
    ("email_changed", {"old_email": "alice@example.com", "new_email": "alice@example.org",
                       "to_old_address": True}),
    ("transfer_sent", {"amount": "5.00", "currency": "USD", "to_account": "1234567890"}),
    ("transfer_received", {"amount": "5.00", "currency": "USD", "from_account": "1234567890"}),
])
def test_every_security_notice_has_the_link(kind, context, smtp, make):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        notices.security_notice(uow.session, alice.user_id, kind, **context)
        uow.commit()
    delivery.deliver_due()
    [message] = smtp.wait_for(1)
    assert LINK.search(body_text(message)) and LINK.search(body_html(message) or "")


def test_email_change_notice_goes_to_both_addresses(smtp, make):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        for to, old in (("alice@example.com", True), ("alice@example.org", False)):
            notices.security_notice(uow.session, alice.user_id, "email_changed", to=to, old_email="alice@example.com",
                                    new_email="alice@example.org", to_old_address=old)
        uow.commit()
    delivery.deliver_due()
    messages = smtp.wait_for(2)
    assert sorted(m["To"] for m in messages) == ["alice@example.com", "alice@example.org"]
    assert {m["Subject"] for m in messages} == {"The email address of your account was changed",
                                                "The email address of your account is now this one"}


def test_notices_refuse_unknown_templates_and_missing_keys(make, database):
    alice = make.account("alice@example.com")
    with unit_of_work() as uow:
        with pytest.raises(ValueError, match="unknown email template"):
            notices.notify(uow.session, alice.user_id, "nope")
        with pytest.raises(ValueError, match="needs amount"):
            notices.security_notice(uow.session, alice.user_id, "transfer_sent", currency="USD", to_account="1")
        with pytest.raises(ValueError, match="not a security notice"):
            notices.security_notice(uow.session, alice.user_id, "verify_email", link="x", expires_at="y")
    assert _outbox(database) == []


# ---------------------------------------------------------------- the Mailer port: one contract, three mailers


@pytest.fixture(params=["smtp", "memory", "file"])
def port(request, smtp, tmp_path):
    """(mailer, inbox) for the real SMTP mailer (read back off the aiosmtpd server), the in-memory one and the file
    one (read back off its directory, oldest first)."""
    if request.param == "smtp":
        return mailer.SmtpMailer("127.0.0.1", smtp.port), lambda n: smtp.wait_for(n)
    if request.param == "file":
        directory = tmp_path / "mail"
        return mailer.FileMailer(directory), lambda n: [_parsed(p) for p in sorted(directory.glob("*.eml"))]
    fake = mailer.MemoryMailer()
    return fake, lambda n: list(fake.sent)


def _message(to: str, subject: str) -> Any:
    from credits.notify.render import Rendered, compose

    return compose(Rendered(subject, f"Hello {to}\n", f"<p>Hello {to}</p>"), to=to, sender="credits@example.net")


def test_mailer_contract_delivers_what_it_accepts(port, app):
    send, inbox = port
    send.send(_message("alice@example.com", "One"))
    send.send(_message("bob@example.com", "Two"))
    got = inbox(2)
    assert [(m["To"], m["Subject"]) for m in got] == [("alice@example.com", "One"), ("bob@example.com", "Two")]
    assert body_text(got[0]).strip() == "Hello alice@example.com"
    assert body_html(got[1]).strip() == "<p>Hello bob@example.com</p>"


# A directory has no recipients to refuse: the file mailer's one failure, an unwritable directory, is temporary
# (test_file_mailer_unwritable_directory_is_retried above).
@pytest.mark.parametrize("port", ["smtp", "memory"], indirect=True)
def test_mailer_contract_refusal_is_a_permanent_mail_error(port, smtp, app):
    send, inbox = port
    if isinstance(send, mailer.MemoryMailer):
        send.fail_next(mailer.MailError("recipient refused", permanent=True, code=550))
    else:
        smtp.refuse.add("gone@example.com")
    with pytest.raises(mailer.MailError) as refused:
        send.send(_message("gone@example.com", "Lost"))
    assert refused.value.permanent and refused.value.code == 550
