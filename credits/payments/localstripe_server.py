"""Run localstripe (a Stripe stand-in) on 127.0.0.1 in a child process that writes no file: tests and demo.

Its own CLI binds every interface and pickles its store to one fixed file after every write, so this module
serves `localstripe.server.app` itself with the pickling turned into a no-op.

    python -m credits.payments.localstripe_server --port 8420      # serve in the foreground

    # ./scripts/run: serve in the foreground with our webhook endpoint registered before the first request
    # (the secret comes from the environment, never from the command line that `ps` shows)
    CREDITS_STRIPE_WEBHOOK_SECRET=whsec_... python -m credits.payments.localstripe_server --port 8420 \
        --webhook-url http://127.0.0.1:5000/webhooks/stripe

    with LocalStripe() as ls:                                       # a child on a free port
        ls.register_webhook("http://127.0.0.1:5000/webhooks/stripe", "whsec_...")
        ... ls.base_url ... ls.js_url ...
        ls.reset()
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The key tests and the demo use: localstripe accepts any sk_/pk_ key.
TEST_SECRET_KEY = "sk_test_localstripe"  # noqa: S105 - a fake key for a fake server
TEST_PUBLISHABLE_KEY = "pk_test_localstripe"
#: The id our webhook endpoint is registered under, and where `--webhook-url` reads its secret from.
WEBHOOK_ID = "credits"
WEBHOOK_SECRET_ENV = "CREDITS_STRIPE_WEBHOOK_SECRET"  # noqa: S105 - the name of a variable, not a secret


class LocalStripeError(RuntimeError):
    """localstripe did not start, did not answer, or refused a /_config call."""


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` right now (the caller binds it soon after; a race is retried by start())."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalStripe:
    """One localstripe child process on 127.0.0.1; stop() ends only that process."""

    def __init__(
        self, port: int | None = None, *, start_timeout_s: float = 15.0, request_timeout_s: float = 5.0
    ) -> None:
        self._wanted_port = port
        self.port: int | None = None
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalStripeError("localstripe is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def js_url(self) -> str:
        """Where its fake Stripe.js is served (CREDITS_STRIPE_JS_URL)."""
        return f"{self.base_url}/js.stripe.com/v3/"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalStripe:
        """Start the child and wait (at most start_timeout_s) until it answers; raise LocalStripeError."""
        if self.running:
            return self
        attempts = 1 if self._wanted_port else 3
        last_error = "not started"
        for _ in range(attempts):
            port = self._wanted_port or free_port()
            self._spawn(port)
            try:
                self._wait_until_up(port)
            except LocalStripeError as exc:
                last_error = str(exc)
                self.stop()
                continue
            self.port = port
            return self
        raise LocalStripeError(f"localstripe did not start: {last_error}")

    def _spawn(self, port: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        # An anonymous temporary file: the child's output, read only to explain a failed start.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [
                sys.executable,
                "-m",
                "credits.payments.localstripe_server",
                "--port",
                str(port),
                "--parent-pid",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(PROJECT_ROOT),
        )

    def _wait_until_up(self, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{HOST}:{port}/js.stripe.com/v3/"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise LocalStripeError(f"the process exited: {self._output()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback URL we built
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise LocalStripeError(f"no answer on port {port} within {self.start_timeout_s} s: {self._output()}")

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace").strip()

    def stop(self) -> None:
        """Terminate our child (and only it), waiting at most a few seconds before killing it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = None

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- /_config ------------------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout_s) as resp:  # noqa: S310 - loopback
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode("utf-8", "replace")
            raise LocalStripeError(f"{method} {path}: HTTP {exc.code} {body}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise LocalStripeError(f"{method} {path}: {exc}") from exc

    def reset(self) -> None:
        """Empty its store (customers, intents, ...); webhook registrations survive."""
        self._request("DELETE", "/_config/data")

    def register_webhook(
        self, url: str, secret: str, *, webhook_id: str = WEBHOOK_ID, events: list[str] | None = None
    ) -> None:
        """Have it POST signed events to `url` (about 1 s after each, once, no retries)."""
        body: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            body["events"] = events
        self._request(
            "POST",
            f"/_config/webhooks/{urllib.parse.quote(webhook_id, safe='')}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )

    def authenticate_payment_intent(
        self,
        payment_intent_id: str,
        client_secret: str,
        *,
        success: bool = True,
        publishable_key: str = TEST_PUBLISHABLE_KEY,
    ) -> dict[str, Any]:
        """Complete (or fail) the 3-D Secure step of an intent in requires_action, as its Stripe.js dialog does."""
        query = urllib.parse.urlencode({"success": "true" if success else "false"})
        form = urllib.parse.urlencode({"client_secret": client_secret, "key": publishable_key}).encode()
        raw = self._request(
            "POST",
            f"/v1/payment_intents/{urllib.parse.quote(payment_intent_id)}/_authenticate?{query}",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        result: dict[str, Any] = json.loads(raw)
        return result


# -- the child process --------------------------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    """End this process when the parent that started it is gone, so a crashed test run leaves no server."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(port: int, host: str = HOST, *, webhook: tuple[str, str] | None = None) -> None:
    """Serve localstripe on host:port in this process, in memory only (blocks until interrupted).

    `webhook` (url, secret): registered (id "credits", every event) before the server takes its first request,
    as `LocalStripe.register_webhook` would do over HTTP.
    """
    from aiohttp import web
    from localstripe import resources, server, webhooks

    # The store pickles itself to /tmp/localstripe.pickle on every write: shared between instances and
    # slower with every object. Keep it in memory.
    resources.Store.dump_to_disk = lambda self: None
    if webhook is not None:
        url, secret = webhook
        webhooks.register_webhook(WEBHOOK_ID, url, secret, None)
    web.run_app(server.app, host=host, port=port, print=None, handle_signals=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve localstripe on 127.0.0.1, in memory, writing no file.")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default=HOST, help="loopback by default; anything else exposes a fake Stripe")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--webhook-url", default="",
                        help="POST signed events here (e.g. http://127.0.0.1:5000/webhooks/stripe)")
    parser.add_argument("--webhook-secret-env", default=WEBHOOK_SECRET_ENV, metavar="NAME",
                        help=f"environment variable holding the webhook signing secret (default {WEBHOOK_SECRET_ENV})")
    args = parser.parse_args(argv)
    webhook = None
    if args.webhook_url:
        secret = os.environ.get(args.webhook_secret_env, "")
        if not args.webhook_url.startswith(("http://", "https://")) or not secret:
            parser.error(f"--webhook-url needs an http(s) URL and a secret in ${args.webhook_secret_env}")
        webhook = (args.webhook_url, secret)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    serve(args.port, args.host, webhook=webhook)
    return 0


if __name__ == "__main__":
    sys.exit(main())
