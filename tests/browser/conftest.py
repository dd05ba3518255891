"""Browser tests: Chromium from the Debian package (/usr/bin/chromium) driven by Playwright, against the real app.

One stack per session (tests/browser/stack.py), one browser per session, one fresh browser context (no cookies)
per test. Chromium reaches nothing but 127.0.0.1 (host resolver rules). `__Host-` cookies need a secure
context: Chromium treats http://127.0.0.1 as one, so the app's session cookie works without TLS.

Without Playwright or Chromium these tests FAIL with what to install, unless CREDITS_BROWSER_ALLOW_SKIP=1
(a developer opting out); CI installs both, so CI always runs them. A failed test leaves a screenshot in
test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.stack import ROOT, Stack

CHROMIUM = os.environ.get("CREDITS_BROWSER_EXECUTABLE", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
TIMEOUT_MS = 20_000


def _unavailable(message: str) -> None:
    if os.environ.get("CREDITS_BROWSER_ALLOW_SKIP") == "1":
        pytest.skip(f"{message} (skipped: CREDITS_BROWSER_ALLOW_SKIP=1)")
    pytest.fail(f"{message}. Install them (Debian: apt-get install chromium; pip install -e '.[test]' for "
                "Playwright; never `playwright install`), or set CREDITS_BROWSER_ALLOW_SKIP=1 to opt out.",
                pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def playwright_ready() -> Any:
    """sync_playwright, once Playwright and Chromium are known to be there (checked before anything starts)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright (the Python package) is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"Chromium is not installed at {CHROMIUM}")
    return sync_playwright


@pytest.fixture(scope="session")
def stack(playwright_ready: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("browser-stack"))
    try:
        s.start()
    except Exception:
        s.stop()
        raise
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser(playwright_ready: Any, stack: Stack) -> Iterator[Any]:
    # Set up after the stack, so torn down before it: the servers then see no keep-alive connections linger.
    with playwright_ready() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Browsers:
    """Fresh browser contexts (separate cookie jars: separate devices) for one test; screenshots on failure."""

    def __init__(self, browser: Any, stack: Stack) -> None:
        self.browser, self.stack = browser, stack
        self.pages: list[Any] = []
        self.console: list[str] = []

    def new_page(self, user_agent: str | None = None) -> Any:
        options: dict[str, Any] = {"base_url": self.stack.base_url}
        if user_agent:
            options["user_agent"] = user_agent
        context = self.browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.pages.append(page)
        return page

    def csp_violations(self) -> list[str]:
        return [line for line in self.console if "Content Security Policy" in line]

    def close(self, failed: bool, name: str) -> None:
        if failed:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for i, page in enumerate(self.pages):
                try:
                    page.screenshot(path=str(SCREENSHOTS / f"{name}-{i}.png"), full_page=True)
                except Exception:  # noqa: BLE001, S110 - a screenshot must not hide the real failure
                    pass
        for page in self.pages:
            page.context.close()


@pytest.fixture
def browsers(browser: Any, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Browsers]:
    b = Browsers(browser, stack)
    yield b
    report = getattr(request.node, "report_call", None)
    failed = report is None or report.failed
    if failed:
        print("browser console:\n" + "\n".join(b.console[-40:]))  # noqa: T201 - shown with the failure
        print(stack.logs())  # noqa: T201
    b.close(failed, re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))


@pytest.fixture
def page(browsers: Browsers) -> Any:
    return browsers.new_page()
