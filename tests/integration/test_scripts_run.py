"""`./scripts/run` for real: the demo starts the app (gunicorn), the jobs process and localstripe, the /buy page
loads Stripe.js from that localstripe, a card payment goes through it with its signed webhook delivered, an email
lands as a file whose link works, and Ctrl-C (SIGINT) or any one process exiting stops every process it started.
localstripe writes no file. Its start message comes once the processes are up, after their start-up lines, and
ends with the sign-in URL; their logs are text lines.

Each run keeps its database, logs and emails in a temporary directory (CREDITS_RUN_INSTANCE_DIR), never in
instance/. Every wait is bounded.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import stripe

from credits import jobs
from credits.notify import jobs as _notify_jobs  # noqa: F401 - registers deliver-outbox in the jobs table
from credits.payments.localstripe_server import TEST_SECRET_KEY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180  # migrations, demo seed and three processes on a busy 2-core machine
STOP_TIMEOUT_S = 60
PICKLE = Path("/tmp/localstripe.pickle")  # noqa: S108 - where localstripe's own CLI would write its store
DEMO_EMAIL, DEMO_PASSWORD = "alice@example.com", "alice-demo-password"  # from `flask --app wsgi demo seed`
# The jobs process delivers the outbox on this interval; the margin covers the job's run on a busy machine.
MAIL_WAIT_S = jobs.table()["deliver-outbox"].every_s + 15
#: How long nothing may follow the sign-in line once it is printed (no job runs again this soon).
QUIET_S = 3
#: A log line in the text format (CREDITS_LOG_FORMAT=text, the development default).
TEXT_LINE = r"\d\d:\d\d:\d\d\.\d{3} [A-Z]+ +[\w.]+: "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`, by pid, with its start time (to tell a reused pid apart)."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], starts[int(entry.name)] = st[0], st[2]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = starts[child]
                frontier.append(child)
    return found


def alive(pid: int, started: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == started and st[1] != "Z"


@dataclass
class Run:
    """One `./scripts/run` in its own session and process group, output in a file."""

    workdir: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    children: dict[int, str] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.workdir / "run.out"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        env.update(PORT=str(self.port), CREDITS_RUN_INSTANCE_DIR=str(self.workdir / "instance"))
        return env

    def start(self) -> Run:
        with self.out.open("wb") as out:
            self.popen = subprocess.Popen([str(ROOT / "scripts" / "run")], cwd=ROOT, env=self.env(),  # noqa: S603
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        return self

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def sign_in_line(self) -> str:
        return f"==> sign in at {self.base}/login  (alice@example.com / alice-demo-password)"

    def wait_until_running(self) -> str:
        """The output up to the start message's last line (the script has then seen /healthz and localstripe
        answer and the jobs process run each job once)."""
        assert self.popen is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.text()
            if "credits is running" in text and self.sign_in_line + "\n" in text:
                self.children = descendants(self.popen.pid)
                return text
            if self.popen.poll() is not None:
                pytest.fail(f"scripts/run exited with {self.popen.returncode}:\n{text[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"scripts/run did not start within {START_TIMEOUT_S} s:\n{self.text()[-4000:]}")

    def wait_for_exit(self) -> int:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/run did not stop within {STOP_TIMEOUT_S} s:\n{self.text()[-3000:]}")

    def assert_all_stopped(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (left := {p for p, s in self.children.items() if alive(p, s)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"still running after scripts/run ended: {left}\n{self.text()[-3000:]}"

    def kill(self) -> None:
        """Teardown after a failure: end the group this run started (and only it)."""
        if self.popen is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None and not any(alive(p, s) for p, s in self.children.items()):
                break
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    yield r
    r.kill()


# ---------------------------------------------------------------- HTTP with cookies


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """Cookies by hand: `__Host-` cookies are Secure, which http.cookiejar never sends over http."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.opener = urllib.request.build_opener(_NoRedirect)

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        hdrs = dict(headers or {})
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)  # noqa: S310
        try:
            resp = self.opener.open(req, timeout=30)
        except urllib.error.HTTPError as exc:
            resp = exc
        with resp:
            for line in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = line.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            return resp.status, dict(resp.headers.items()), resp.read().decode("utf-8", "replace")

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = {"Accept": "application/json", **(headers or {})}
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        status, _, text = self.request(method, path, body=body, headers=hdrs)
        return status, json.loads(text) if text else None


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def sign_in_on_the_page(web: Browser) -> None:
    status, _, html = web.request("GET", "/login")
    assert status == 200
    status, headers, _ = web.request("POST", "/login", form={
        "csrf_token": csrf_of(html), "email": DEMO_EMAIL, "password": DEMO_PASSWORD})
    assert status == 303 and headers["Location"].endswith("/dashboard"), (status, headers)


def pay_10_with_4242(web: Browser, stripe_base: str) -> tuple[dict[str, Any], str]:
    """What /buy does, with the card step done against localstripe directly: returns (purchase, token)."""
    status, body = web.api("POST", "/api/v1/auth/token", {"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
    assert status == 201, body
    token = body["token"]
    status, setup = web.api("POST", "/api/v1/me/payment-methods", {}, token)
    assert status == 201, setup
    raw = stripe.StripeClient(TEST_SECRET_KEY, base_addresses={"api": stripe_base}, max_network_retries=0)
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    pm = raw.v1.payment_methods.create(cast(Any, {"type": "card", "card": card})).id
    assert raw.v1.setup_intents.confirm(setup["setup_intent"], {"payment_method": pm}).status == "succeeded"
    status, purchase = web.api("POST", "/api/v1/me/purchases",
                               {"amount": "10.00", "payment_method": pm, "remember": False}, token,
                               {"Idempotency-Key": secrets.token_hex(16)})
    assert status == 201, purchase
    return purchase, token


def micro(amount: str) -> int:
    units, _, frac = amount.partition(".")
    return int(units) * 1_000_000 + int((frac + "000000")[:6])


def wait_for_email(directory: Path, to: str, subject: str, deadline: float) -> tuple[Path, Any]:
    """The first .eml file in `directory` to `to` with `subject`, once the jobs process has written it."""
    while True:
        for path in sorted(directory.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if (message["To"], message["Subject"]) == (to, subject):
                return path, message
        if time.monotonic() > deadline:
            pytest.fail(f"no email {subject!r} in {directory}: {sorted(os.listdir(directory))}")
        time.sleep(0.5)


def webhook_events(db: Path, intent_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT type, outcome FROM webhook_events WHERE object_id = ?", (intent_id,)).fetchall()


# ---------------------------------------------------------------- tests


def cmdline(pid: int) -> str:
    """The command line of a process, or "" when it has exited meanwhile (short-lived helpers do)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def assert_start_message_comes_last_and_logs_are_text(run: Run, text: str) -> None:
    """The start message follows every process's start-up lines, its last line is the sign-in URL, and nothing
    follows it at start-up; the app's and the jobs process's log lines are text, not JSON."""
    time.sleep(QUIET_S)
    assert run.text() == text, f"printed after the start message:\n{run.text()[len(text):][-3000:]}"
    lines = text.rstrip("\n").splitlines()
    assert lines[-1] == run.sign_in_line, lines[-5:]
    start = lines.index(next(line for line in lines if "credits is running" in line))
    listed = re.search(r"^\[jobs\] jobs: (.*) \(holder [^)]*\)$", text, re.M)
    assert listed, text[-4000:]
    startup = [r"\[INFO\] Starting gunicorn", r"\[INFO\] Booting worker",
               rf"^{TEXT_LINE}GET /healthz 200  method=GET path=/healthz status=200 duration_ms=\S+ request_id=\w+$",
               rf"^\[jobs\] {TEXT_LINE}Scheduler started$", r"^\[jobs\] jobs: ",
               # Anywhere in a line: two jobs printing at once (threads) can share one.
               *(rf"^\[jobs\] .*(?<![\w-]){re.escape(name)}: [{{s]" for name in listed.group(1).split(", "))]
    for pattern in startup:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found and max(found) < start, (pattern, found, start)
    assert not [line for line in lines if re.match(r"(\[\w+\] )?\{", line)]  # no JSON line
    message = "\n".join(lines[start:])
    for login in ("alice@example.com      password alice-demo-password", "bob@example.com        password "
                  "bob-demo-password", "support@example.com    password support-demo-password"):
        assert login in message


def test_run_serves_the_store_with_localstripe_and_ctrl_c_stops_everything(run: Run) -> None:
    pickle_before = PICKLE.stat().st_mtime_ns if PICKLE.exists() else None
    message = run.start().wait_until_running()
    assert_start_message_comes_last_and_logs_are_text(run, message)

    db = run.workdir / "instance" / "credits.db"
    assert f"database {db}" in message and db.is_file()  # not the developer's instance/
    assert (run.workdir / "instance" / "logs" / "jobs.log").is_file()
    match = re.search(r"localstripe at (http://127\.0\.0\.1:([0-9]+)) \(pid ([0-9]+)\)", message)
    assert match, message
    stripe_base, stripe_port = match.group(1), int(match.group(2))
    for card in ("4242 4242 4242 4242", "4000 0025 0000 3155", "4000 0000 0000 0341"):
        assert card in message
    mail = run.workdir / "instance" / "mail"
    assert f"as a file in {mail}" in message and "CREDITS_MAIL_BACKEND=file" in message and mail.is_dir()
    assert "arrive with later features" not in message
    cmdlines = " ".join(cmdline(p) for p in run.children)
    for part in ("gunicorn wsgi:app", "jobs run", "credits.payments.localstripe_server"):
        assert part in cmdlines

    # Safe to start twice: a second run on the same port says so and touches nothing.
    second = subprocess.run([str(ROOT / "scripts" / "run")], cwd=ROOT, env=run.env(),  # noqa: S603
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)
    assert second.returncode == 1 and b"already in use" in second.stderr, second.stderr[-2000:]

    web = Browser(run.base)
    with urllib.request.urlopen(f"{run.base}/healthz", timeout=10) as r:  # noqa: S310 - loopback
        assert r.status == 200

    # Asked for now, the reset email is looked for after the payment below: deliver-outbox runs every 30 s.
    asked_at = time.monotonic()
    status, _ = web.api("POST", "/api/v1/auth/password-reset", {"email": DEMO_EMAIL})
    assert status == 202

    # The /buy page loads Stripe.js from the loopback localstripe, which answers, under a CSP allowing it.
    sign_in_on_the_page(web)
    status, headers, html = web.request("GET", "/buy")
    assert status == 200, html[:2000]
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html)
    assert scripts == [f"{stripe_base}/js.stripe.com/v3/", "/assets/buy.js"]
    assert urllib.parse.urlsplit(scripts[0]).hostname == "127.0.0.1"
    assert f"script-src 'self' {stripe_base}" in headers["Content-Security-Policy"]
    with urllib.request.urlopen(scripts[0], timeout=10) as r:  # noqa: S310 - loopback
        assert r.status == 200 and b"Stripe" in r.read()

    # A card payment through the running app and localstripe: 10.00 lands in the wallet...
    status, body = web.api("POST", "/api/v1/auth/token", {"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
    status, wallet = web.api("GET", "/api/v1/me/wallet", token=body["token"])
    assert status == 200, wallet
    purchase, token = pay_10_with_4242(web, stripe_base)
    assert (purchase["status"], purchase["amount"]) == ("succeeded", "10.000000")
    status, after = web.api("GET", "/api/v1/me/wallet", token=token)
    assert micro(after["balance"]) - micro(wallet["balance"]) == 10_000_000
    # ... and localstripe's payment_intent.succeeded reaches /webhooks/stripe signed with this run's secret
    # (a bad signature is refused and stores nothing).
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        intent_id = conn.execute("SELECT payment_intent_id FROM purchases WHERE id = ?",
                                 (purchase["id"],)).fetchone()[0]
    deadline = time.monotonic() + 30
    while not (events := webhook_events(db, intent_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert events == [("payment_intent.succeeded", "already_granted")], run.text()[-3000:]

    # The access log keeps the path and drops the query string (pay links carry their token there).
    link_token = secrets.token_urlsafe(32)
    status, _, _ = web.request("GET", f"/pay?token={link_token}")
    assert status in (404, 410)

    # The reset email is a file in the run's mail directory, owner-only, and its link sets a new password.
    path, reset = wait_for_email(mail, DEMO_EMAIL, "Reset your password", asked_at + MAIL_WAIT_S)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    text = reset.get_body(("plain",)).get_content()
    [link] = re.findall(rf"{re.escape(run.base)}(/reset-password\?token=[A-Za-z0-9_-]+)", text)
    anon = Browser(run.base)
    status, _, html = anon.request("GET", link)
    reset_token = link.rpartition("=")[2]
    assert status == 200 and f'value="{reset_token}"' in html, html[:2000]
    status, _, html = anon.request("POST", "/reset-password", form={
        "csrf_token": csrf_of(html), "token": reset_token, "password": "mauve-orbit-lantern-42"})
    assert status == 200 and "Your password is changed" in html, html[:2000]

    # Ctrl-C: the script stops gunicorn (and its workers), the jobs process and localstripe.
    assert run.popen is not None
    run.popen.send_signal(signal.SIGINT)
    assert run.wait_for_exit() == 130
    run.assert_all_stopped()
    assert refuses(run.port) and refuses(stripe_port)
    text = run.text()
    assert "==> stopping localstripe jobs gunicorn" in text
    assert "/pay" in text and link_token not in text
    assert "/reset-password" in text and reset_token not in text  # the emailed token is in the file only
    assert (PICKLE.stat().st_mtime_ns if PICKLE.exists() else None) == pickle_before


def test_one_process_exiting_stops_the_others(run: Run) -> None:
    message = run.start().wait_until_running()
    match = re.search(r"localstripe at http://127\.0\.0\.1:[0-9]+ \(pid ([0-9]+)\)", message)
    assert match, message
    stripe_pid = int(match.group(1))
    assert stripe_pid in run.children
    os.kill(stripe_pid, signal.SIGTERM)
    assert run.wait_for_exit() != 0
    run.assert_all_stopped()
    assert "a process exited" in run.text()
    assert refuses(run.port)
