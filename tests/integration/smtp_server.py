"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, plain, STARTTLS or implicit TLS, optional AUTH.

The messages that arrive are kept as parsed `email.message.EmailMessage` objects.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# The test server's own chatter (it logs every line of DATA at DEBUG) is not the application's log.
logging.getLogger("mail.log").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, written as PEM; the cert is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address in self.sink.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.sink.lock:
            self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.sink.messages.append(message_from_bytes(envelope.content, policy=policy.default))  # type: ignore[arg-type]
        return "250 OK"


class SmtpSink:
    """An SMTP server that keeps what it receives. `tls`: none, starttls or ssl; `users`: {login: password}."""

    def __init__(self, port: int | None = None, *, tls: str = "none", cert: tuple[Path, Path] | None = None,
                 users: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self.refuse: set[str] = set()
        self.lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        if tls != "none":
            assert cert is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(cert[0]), str(cert[1]))
            if tls == "ssl":
                kwargs["ssl_context"] = context
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        if users is not None:
            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = (isinstance(data, LoginPassword)
                      and users.get(data.login.decode()) == data.password.decode())
                if ok:
                    self.logins.append(data.login.decode())
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=tls != "none")
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} messages, got {len(self.messages)}")


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def body_html(message: EmailMessage) -> str | None:
    part = message.get_body(preferencelist=("html",))
    return None if part is None else str(part.get_content())
