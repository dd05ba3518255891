"""The file mailer (CREDITS_MAIL_BACKEND=file): each message written whole as an .eml file, names that sort and never
collide, owner-only files; and the settings that choose it (refused in production, a clear error for a bad dir)."""

from __future__ import annotations

import email
import email.policy
import os
import stat
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from credits import config
from credits.config import Config
from credits.errors import ConfigError
from credits.notify import mailer
from credits.notify.render import Rendered, compose

pytestmark = pytest.mark.usefixtures("clock")  # the names carry the time: a frozen clock gives equal times


def _message(to: str = "alice@example.com", subject: str = "Reset your password", text: str = "") -> EmailMessage:
    text = text or f"Hello {to}\nChoose a new password: https://credits.example.net/reset-password?token=abc\n"
    html = '<p><a href="https://credits.example.net/reset-password?token=abc">Choose a new password</a></p>'
    return compose(Rendered(subject, text, html), to=to, sender="credits@example.net", message_key="outbox.1")


def _read(path: Path) -> Any:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def _eml(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.eml"))


def test_the_message_is_written_whole_as_smtp_would_send_it(tmp_path):
    sent = _message()
    sent["Bcc"] = "audit@example.net"
    sent.set_boundary("==b0undary==")  # otherwise each serialisation draws a new one
    mailer.FileMailer(tmp_path).send(sent)
    [path] = _eml(tmp_path)
    raw = path.read_bytes()
    assert raw == mailer.wire_bytes(sent)
    assert raw.count(b"\r\n") == raw.count(b"\n")  # RFC 5322 line ends
    got = _read(path)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"):
        assert got[header] == sent[header], header
    assert got["Bcc"] is None and sent["Bcc"] == "audit@example.net"  # dropped from the copy, as smtplib does
    for kind in ("plain", "html"):  # read back off disk the parts keep the file's CRLF line ends
        assert got.get_body((kind,)).get_content().replace("\r\n", "\n") == sent.get_body((kind,)).get_content()
    assert "https://credits.example.net/reset-password?token=abc" in got.get_body(("plain",)).get_content()


def test_names_are_unique_and_sort_in_the_order_sent_within_one_second(tmp_path, clock):
    send = mailer.FileMailer(tmp_path)
    for subject in ("One", "Two", "Three"):
        send.send(_message(subject=subject))  # same instant: the clock is frozen
    clock.advance(seconds=1)
    mailer.FileMailer(tmp_path).send(_message(subject="Four"))  # another instance, as each job run makes
    paths = _eml(tmp_path)
    assert len({p.name for p in paths}) == 4
    assert [_read(p)["Subject"] for p in paths] == ["One", "Two", "Three", "Four"]
    assert all(p.name.startswith("20261122T120000.000000Z-") for p in paths[:3])
    assert paths[3].name.startswith("20261122T120001.000000Z-")


def test_threads_sending_at_once_get_a_file_each(tmp_path):
    send = mailer.FileMailer(tmp_path)
    threads = [threading.Thread(target=send.send, args=(_message(subject=f"m{i}"),)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(_read(p)["Subject"] for p in _eml(tmp_path)) == sorted(f"m{i}" for i in range(20))


def test_the_directory_is_made_and_the_files_are_owner_only(tmp_path):
    directory = tmp_path / "instance" / "mail"
    previous = os.umask(0)  # even a permissive umask must not open the one-time links to others
    try:
        mailer.FileMailer(directory).send(_message())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [path] = _eml(directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_temporary_file_is_left_and_a_reader_never_sees_part_of_a_message(tmp_path):
    big = "x" * 70 + "\n"
    messages = [_message(subject=f"m{i}", text=big * 4000) for i in range(15)]
    sizes = {m["Subject"]: len(mailer.wire_bytes(m)) for m in messages}
    short: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for path in tmp_path.glob("*.eml"):
                raw = path.read_bytes()
                subject = email.message_from_bytes(raw, policy=email.policy.default)["Subject"]
                if len(raw) != sizes.get(subject, -1):
                    short.append(path.name)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        send = mailer.FileMailer(tmp_path)
        for message in messages:
            send.send(message)
    finally:
        done.set()
        reader.join(timeout=30)
    assert short == []
    assert sorted(os.listdir(tmp_path)) == [p.name for p in _eml(tmp_path)] and len(_eml(tmp_path)) == 15


def test_a_failed_write_leaves_nothing_and_is_a_temporary_mail_error(tmp_path, monkeypatch):
    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mailer.os, "replace", refuse)
    with pytest.raises(mailer.MailError) as failed:
        mailer.FileMailer(tmp_path).send(_message())
    assert not failed.value.permanent  # the operator can free space; the outbox tries again
    assert os.listdir(tmp_path) == []


def test_a_file_where_the_directory_should_be_is_a_temporary_mail_error(tmp_path):
    taken = tmp_path / "mail"
    taken.write_text("not a directory")
    with pytest.raises(mailer.MailError) as failed:
        mailer.FileMailer(taken).send(_message(to="gone@example.com"))
    assert not failed.value.permanent
    assert str(failed.value).startswith("mail directory not writable") and "gone@" not in str(failed.value)


# ---------------------------------------------------------------- settings


def test_file_backend_is_chosen_from_the_settings(tmp_path):
    cfg = Config.from_env({"CREDITS_MAIL_BACKEND": "file", "CREDITS_MAIL_DIR": str(tmp_path / "mail")}, env="test")
    chosen = mailer.from_config(cfg)
    assert isinstance(chosen, mailer.FileMailer) and chosen.directory == tmp_path / "mail"
    assert Path(Config().mail_dir) == config.PROJECT_ROOT / "instance" / "mail"


def test_production_refuses_the_file_backend(tmp_path):
    with pytest.raises(ConfigError) as refused:
        Config.from_env({}, env="production", mail_backend="file", mail_dir=str(tmp_path))
    assert "CREDITS_MAIL_BACKEND=file would deliver no email in production" in refused.value.message
    with pytest.raises(ConfigError, match="CREDITS_MAIL_BACKEND=memory would lose every email"):
        Config.from_env({}, env="production", mail_backend="memory")


@pytest.mark.parametrize("bad,expected", [
    ({"CREDITS_MAIL_BACKEND": "files"}, "CREDITS_MAIL_BACKEND must be one of smtp, memory, file"),
    ({"CREDITS_MAIL_BACKEND": "file", "CREDITS_MAIL_DIR": "instance/mail"}, "CREDITS_MAIL_DIR must be an absolute"),
    ({"CREDITS_MAIL_BACKEND": "file", "CREDITS_MAIL_DIR": ""}, "CREDITS_MAIL_DIR must be an absolute"),
    ({"CREDITS_MAIL_BACKEND": "file", "CREDITS_MAIL_DIR": "{file}"}, "CREDITS_MAIL_DIR must be a directory"),
])
def test_bad_mail_settings_are_a_clear_config_error(bad, expected, tmp_path):
    a_file = tmp_path / "mail"
    a_file.write_text("")
    environ = {k: v.format(file=a_file) for k, v in bad.items()}
    with pytest.raises(ConfigError, match=expected):
        Config.from_env(environ, env="test")


def test_the_mail_dir_is_not_checked_when_another_backend_is_chosen():
    assert Config.from_env({"CREDITS_MAIL_DIR": "relative/unused"}, env="test", mail_backend="smtp").mail_dir == (
        "relative/unused")
