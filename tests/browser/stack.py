"""The system the browser tests drive, all on 127.0.0.1: the app under gunicorn and the jobs process (which
delivers the email outbox every second) on a fresh migrated SQLite database, localstripe as Stripe, and an
aiosmtpd server that keeps the mail it receives.

Every process is started here and stopped by its own Popen object (never by name).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any

from aiosmtpd.controller import Controller

from credits.payments.localstripe_server import TEST_PUBLISHABLE_KEY, TEST_SECRET_KEY, LocalStripe

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"  # noqa: S105 - test accounts only
WEBHOOK_SECRET = "whsec_browser_tests"  # noqa: S105 - a fake secret for a fake Stripe
START_TIMEOUT_S = 60  # bound on each process start (the machine may be busy)
LINK = re.compile(r"https?://127\.0\.0\.1:[0-9]+/[^\s\"'<>]+")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- mail


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.sink.lock:
            self.sink.messages.append(message)
        return "250 OK"


class MailSink:
    """A plain SMTP server on 127.0.0.1 that keeps every message it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> MailSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, to: str, contains: str, timeout_s: float = 60.0) -> EmailMessage:
        """The first message to `to` whose text contains `contains`, waiting for the jobs process to send it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                for message in self.messages:
                    if to.lower() in str(message["To"]).lower() and contains in text_of(message):
                        return message
            time.sleep(0.1)
        with self.lock:
            seen = [(str(m["To"]), str(m["Subject"])) for m in self.messages]
        raise AssertionError(f"no email to {to} containing {contains!r} within {timeout_s} s; got {seen}")


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return "" if part is None else str(part.get_content())


def link_in(message: EmailMessage, path: str) -> str:
    """The first link in the message's text whose path starts with `path`."""
    for url in LINK.findall(text_of(message)):
        if url.split("/", 3)[3].startswith(path.lstrip("/")):
            return str(url)
    raise AssertionError(f"no {path} link in: {text_of(message)}")


# ---------------------------------------------------------------- processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.log.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _start(name: str, argv: list[str], env: dict[str, str], workdir: Path,
           stop_signal: int = signal.SIGTERM) -> Process:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                             env=env)
    return Process(name, popen, log, log_path, stop_signal)


@dataclass
class Stack:
    workdir: Path
    mail: MailSink = field(default_factory=MailSink)
    stripe_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.localstripe = LocalStripe(self.stripe_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.stripe_port}"

    def _env(self) -> dict[str, str]:
        # Nothing from the caller's CREDITS_* settings leaks in (CI sets a Redis URL for other tests).
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        env.update({
            "PYTHONPATH": str(ROOT),
            "CREDITS_ENV": "test",
            "CREDITS_DATABASE_URL": f"sqlite:///{self.workdir / 'browser.db'}",
            "CREDITS_SECRET_KEY": secrets.token_urlsafe(32),
            "CREDITS_PUBLIC_URL": self.base_url,
            "CREDITS_MAIL_BACKEND": "smtp",
            "CREDITS_SMTP_HOST": "127.0.0.1",
            "CREDITS_SMTP_PORT": str(self.mail.port),
            "CREDITS_SMTP_TLS": "none",
            "CREDITS_STRIPE_API_BASE": self.stripe_url,
            "CREDITS_STRIPE_JS_URL": f"{self.stripe_url}/js.stripe.com/v3/",
            "CREDITS_STRIPE_SECRET_KEY": TEST_SECRET_KEY,
            "CREDITS_STRIPE_PUBLISHABLE_KEY": TEST_PUBLISHABLE_KEY,
            "CREDITS_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            # The jobs process runs every job (deliver-outbox above all) every second.
            "CREDITS_JOB_INTERVAL_S": "1",
            # Every sign-up of the suite comes from 127.0.0.1: these tests are not about throttling.
            "CREDITS_REGISTER_IP_LIMIT": "200 per hour",
            "CREDITS_LOG_LEVEL": "WARNING",
        })
        return env

    def start(self) -> Stack:
        """Start everything, in parallel where the order allows (imports take seconds on a busy machine)."""
        self.env = self._env()
        flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
        self.mail.start()
        migrate = _start("migrate", [*flask, "db", "upgrade"], self.env, self.workdir)
        # The app touches the database only when asked: it may load while the migration runs.
        self.processes.append(_start("gunicorn", [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
            "--worker-class", "gthread", "--threads", "8", "--timeout", "60", "wsgi:app"], self.env, self.workdir,
            stop_signal=signal.SIGINT))  # quick shutdown: the browser may still hold keep-alive connections
        try:
            self.localstripe.start()
            migrate.popen.wait(timeout=START_TIMEOUT_S)
        finally:
            migrate.stop()
        if migrate.popen.returncode != 0:
            raise RuntimeError(f"flask db upgrade failed:\n{migrate.tail()}")
        self.processes.append(_start("jobs", [*flask, "jobs", "run"], self.env, self.workdir))
        self._wait_until_up()
        self.localstripe.register_webhook(f"{self.base_url}/webhooks/stripe", WEBHOOK_SECRET)
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for p in self.processes:
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"the app did not answer within {START_TIMEOUT_S} s:\n{self.processes[0].tail()}")

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()
        self.localstripe.stop()
        self.mail.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)

    # ---------------------------------------------------------------- the JSON API, for set-up and checks

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *,
            token: str | None = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def new_customer(self, label: str) -> str:
        """Sign a customer up through the API (the sign-up page has its own test); return the address."""
        email = f"{label}-{secrets.token_hex(4)}@example.com"
        status, body = self.api("POST", "/api/v1/auth/register", {
            "email": email, "password": PASSWORD, "name": "Robin Example", "date_of_birth": "1988-04-02",
            "country": "GB"})
        assert status == 201, body
        return email

    def wallet(self, email: str) -> dict[str, Any]:
        """The customer's wallet as GET /api/v1/me/wallet answers it (with a personal token)."""
        status, body = self.api("POST", "/api/v1/auth/token", {"email": email, "password": PASSWORD})
        assert status == 201, body
        status, wallet = self.api("GET", "/api/v1/me/wallet", token=body["token"])
        assert status == 200, wallet
        return dict(wallet)


# ---------------------------------------------------------------- pages


def sign_in(page: Any, email: str, password: str = PASSWORD) -> None:
    """Sign in through the login page (no second factor) and land on the dashboard."""
    page.goto("/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dashboard")
