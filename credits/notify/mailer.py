"""The mail port: `Mailer.send(message)`, with SMTP, in-memory and file implementations, chosen from config."""

from __future__ import annotations

import copy
import io
import itertools
import os
import secrets
import smtplib
import ssl
import threading
from email.generator import BytesGenerator
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from credits import clock, config


class MailError(Exception):
    """Sending failed. `permanent`: trying again cannot help (the relay refused the recipient or the content)."""

    def __init__(self, message: str, *, permanent: bool = False, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None:
        """Hand `message` to the mail system; raise MailError when it was not accepted."""
        ...


class SmtpMailer:
    """Deliver through an SMTP relay with smtplib: plain, STARTTLS or implicit TLS; AUTH when a user is set."""

    def __init__(self, host: str, port: int, *, tls: str = "none", user: str = "", password: str = "",
                 timeout_s: float = 10, ca_file: str = "") -> None:
        if tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"tls is none, starttls or ssl, not {tls!r}")
        self.host, self.port, self.tls = host, port, tls
        self.user, self.password, self.timeout_s, self.ca_file = user, password, timeout_s, ca_file

    @classmethod
    def from_config(cls, cfg: config.Config) -> SmtpMailer:
        return cls(cfg.smtp_host, cfg.smtp_port, tls=cfg.smtp_tls, user=cfg.smtp_user, password=cfg.smtp_password,
                   timeout_s=cfg.smtp_timeout_s, ca_file=cfg.smtp_ca_file)

    def _context(self) -> ssl.SSLContext:
        # Certificates are always verified: a relay on a private CA is trusted through CREDITS_SMTP_CA_FILE.
        return ssl.create_default_context(cafile=self.ca_file or None)

    def _connect(self) -> smtplib.SMTP:
        if self.tls == "ssl":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=self._context())
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        if self.tls == "starttls":
            smtp.ehlo()
            smtp.starttls(context=self._context())
            smtp.ehlo()
        return smtp

    def send(self, message: EmailMessage) -> None:
        try:
            with self._connect() as smtp:
                if self.user:
                    smtp.login(self.user, self.password)
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise MailError("recipient refused", permanent=all(c >= 500 for c in codes),
                            code=codes[0] if codes else None) from exc
        except smtplib.SMTPDataError as exc:
            raise MailError("message refused", permanent=exc.smtp_code >= 500, code=exc.smtp_code) from exc
        except smtplib.SMTPResponseException as exc:
            # Sender refused, authentication failed, relay busy: the operator or time can fix these.
            raise MailError(f"relay answered {exc.smtp_code}", code=exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:  # OSError covers timeouts and TLS errors
            raise MailError(f"relay unreachable ({type(exc).__name__})") from exc
        if refused:
            codes = [code for code, _ in refused.values()]
            raise MailError("recipient refused", permanent=all(c >= 500 for c in codes), code=codes[0])


class MemoryMailer:
    """Keeps messages in a list (tests, development without a relay). `fail_next(error, times)` makes it fail."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self._failures: list[MailError] = []
        self._lock = threading.Lock()

    def fail_next(self, error: MailError, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([error] * times)

    def send(self, message: EmailMessage) -> None:
        with self._lock:
            if self._failures:
                raise self._failures.pop(0)
            self.sent.append(message)

    def clear(self) -> None:
        with self._lock:
            self.sent.clear()
            self._failures.clear()


#: The process's in-memory mailbox when CREDITS_MAIL_BACKEND=memory.
MEMORY = MemoryMailer()


def wire_bytes(message: EmailMessage) -> bytes:
    """Serialise `message` as smtplib's `send_message` puts it on the wire: Bcc headers dropped, CRLF line ends."""
    # A shallow copy, as smtplib makes: deleting a header rebinds the copy's header list, not the original's.
    sent = copy.copy(message)
    del sent["Bcc"]
    del sent["Resent-Bcc"]
    out = io.BytesIO()
    BytesGenerator(out).flatten(sent, linesep="\r\n")
    return out.getvalue()


# Orders the names of files written in the same microsecond by this process (a frozen clock gives many).
_FILE_SEQUENCE = itertools.count(1)
_FILE_SEQUENCE_LOCK = threading.Lock()


class FileMailer:
    """Writes each message as an RFC 5322 `.eml` file into a directory (demos: emailed links can be followed)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @classmethod
    def from_config(cls, cfg: config.Config) -> FileMailer:
        return cls(cfg.mail_dir)

    def send(self, message: EmailMessage) -> None:
        """Write `message` to `<directory>/<UTC time>-<sequence>-<random>.eml`, whole or not at all.

        The bytes are those SmtpMailer would send (`wire_bytes`). Names sort by the time of writing and never
        collide: the sequence orders one process's files within a microsecond, the random part keeps two
        processes apart. The file is written under a hidden temporary name and renamed, so a reader sees all of
        it or nothing; it is readable by the owner only (0600: it holds one-time links), and the directory is
        made (0700) when missing. Raises MailError, not permanent, when the directory cannot be written: the
        operator can fix that, and the outbox tries again.
        """
        data = wire_bytes(message)
        with _FILE_SEQUENCE_LOCK:  # time and sequence together, so that a later sequence is never an earlier time
            stamp, sequence = clock.now().strftime("%Y%m%dT%H%M%S.%fZ"), next(_FILE_SEQUENCE)
        name = f"{stamp}-{sequence:06d}-{secrets.token_hex(4)}.eml"
        final, temporary = self.directory / name, self.directory / f".{name}.tmp"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # O_EXCL: never write through a file or symlink someone else put at the temporary name.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    # Before the rename: a crash must not leave an empty file under the final name.
                    os.fsync(out.fileno())
                os.replace(temporary, final)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise MailError(f"mail directory not writable ({type(exc).__name__})") from exc


def from_config(cfg: config.Config | None = None) -> Mailer:
    """The mailer the settings choose (the one place that picks between real and fake)."""
    cfg = cfg or config.current()
    if cfg.mail_backend == "memory":
        return MEMORY
    if cfg.mail_backend == "file":
        return FileMailer.from_config(cfg)
    return SmtpMailer.from_config(cfg)
