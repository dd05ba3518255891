"""Payment-page change detector (CHECKLIST I60; PCI DSS 6.4.3 and 11.6.1): fingerprint what each payment page
serves, keep an accepted baseline, and alert the security officers once for every new unaccepted fingerprint.

What a payment page is: every GET route whose view carries `credits.web.csp.payment_page` (the decorator that
gives a page the payment CSP), found on the app's URL map at each check, so a new payment page is monitored
as soon as it is decorated (the pay link page included). A route with arguments is fetched with a placeholder
value ("page-check", or 0), so what is monitored there is its answer to an unknown argument.

How a page is fetched (`AppPageSource`, the adapter): in process, through the app's test client, as a real
browser would ask for it, signed in as the synthetic account `MONITOR_EMAIL` (created on first use: role
customer, status restricted, no password, so nobody can sign in with it or move money from it) with a web
session that exists only for the duration of the check. In process rather than over HTTP to
CREDITS_PUBLIC_URL because the page needs a signed-in session and the check must work in tests and without
a network; the cost is that a proxy or CDN in front of the app is not seen (check that with an external
monitor if one rewrites pages). The adapter drives the Flask app it is given through the app's own methods
and reads two names of the web layer lazily (the session cookie, the payment_page decorator); nothing here
imports Flask. Each request runs in a fresh context, so that `g` of one page never leaks into the next. The
jobs process has no app context in its scheduler threads, so `run_job` builds one app per process and
settings (`credits.create_app`); `payments page-check` uses the app it runs in.

What is fingerprinted (`capture`), after normalising what differs between runs and users:
- scripts: every <script> in document order: its src (resolved against the page; for a same-origin script
  the SHA-256 of the file the app serves, e.g. /assets/buy.js; a third-party script such as Stripe.js by URL
  only: Stripe changes it and forbids copies) and its type/integrity/crossorigin attributes; an inline script
  as the CSP-style sha256 of its text;
- security headers (`SECURITY_HEADERS`; absent ones as absent), CSP nonces replaced by `[nonce]`;
- the markup: a canonical listing of tags (attributes sorted), text and comments, with nonces, CSRF tokens
  (attributes named *csrf*, values of inputs named *csrf*/*token*, token query parameters in URLs), numbers
  in text ("#") and email addresses replaced; the status code.
The fingerprint is the SHA-256 of these parts as canonical JSON. The parts are stored with each fingerprint
(`payment_page_versions`) so that a change can be shown as a readable diff against the baseline.
"""

from __future__ import annotations

import base64
import contextvars
import difflib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from sqlalchemy import (
    CheckConstraint,
    CursorResult,
    ForeignKey,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from credits import audit, clock, config, crypto
from credits.db import Base, BigInt, UTCDateTime, insert_for, unit_of_work
from credits.errors import Conflict, NotFound, ValidationError

log = logging.getLogger(__name__)

#: The synthetic account the monitor signs in as (an .invalid address: RFC 2606, never deliverable).
MONITOR_EMAIL = "payment-page-monitor@monitor.invalid"
MONITOR_AGENT = "payment-page-monitor"
#: Headers whose value is part of the fingerprint (lower-case). Others (Date, Set-Cookie, X-Request-Id,
#: Content-Length) change on every request.
SECURITY_HEADERS = (
    "content-security-policy", "content-security-policy-report-only", "strict-transport-security",
    "x-frame-options", "x-content-type-options", "referrer-policy", "permissions-policy",
    "cross-origin-opener-policy", "cross-origin-embedder-policy", "cross-origin-resource-policy",
    "cache-control", "content-type",
)
#: Roles that are told about a change and may accept one.
OFFICER_ROLES = ("security_officer", "admin")
OUTCOMES = ("ok", "changed", "error")
PLACEHOLDER = "page-check"
#: The pseudo-page of the payment pages' script files that no checked page loads (see `check`).
SCRIPT_FILES_PAGE = "static-scripts"
JOB_NAME = "check-payment-pages"
_MAX_DIFF_LINES = 60


# ---------------------------------------------------------------- tables


class PaymentPage(Base):
    """A monitored payment page: its current fingerprint and the accepted baseline."""

    __tablename__ = "payment_pages"
    __table_args__ = (CheckConstraint(f"last_outcome IN {OUTCOMES!r}", name="last_outcome"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    path: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    current_fingerprint: Mapped[str | None] = mapped_column(String(64))
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_outcome: Mapped[str | None] = mapped_column(String(16))
    #: Why the last check could not see the page (status, redirect); no page content.
    last_error: Mapped[str | None] = mapped_column(String(200))
    baseline_fingerprint: Mapped[str | None] = mapped_column(String(64))
    baseline_accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The security officer or admin who accepted it; NULL for the baseline recorded by the first check.
    baseline_accepted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    baseline_reason: Mapped[str | None] = mapped_column(String(500))


class PaymentPageVersion(Base):
    """One fingerprint a page has served: its parts (for diffs), when it was first and last seen, and when
    it raised its alert (at most once)."""

    __tablename__ = "payment_page_versions"
    __table_args__ = (UniqueConstraint("page_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("payment_pages.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: JSON: status, scripts, headers, markup (normalised: no tokens, no user data).
    parts: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


P: Table = PaymentPage.__table__  # type: ignore[assignment]
V: Table = PaymentPageVersion.__table__  # type: ignore[assignment]


# ---------------------------------------------------------------- fetching: the port and the app adapter


@dataclass(frozen=True)
class Fetched:
    """One HTTP answer: status, headers (names lower-case), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class PageSource(Protocol):
    """Where pages come from: the payment pages there are, the script files that may serve them, and GET of
    a same-origin path."""

    origin: str

    def pages(self) -> list[str]: ...

    def script_files(self) -> list[str]: ...

    def get(self, path: str) -> Fetched: ...


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class AppPageSource:
    """The app's own answers, through its test client (no network), as the holder of `session_token`.

    `app` is the Flask app; it is used only through its methods, so this module imports no Flask.
    """

    def __init__(self, app: Any, session_token: str | None = None) -> None:
        from credits.web.auth import SESSION_COOKIE

        self.app = app
        self.origin = _origin_of(config.current().public_url)
        self._cookie = f"{SESSION_COOKIE}={session_token}" if session_token else None

    def _payment_endpoints(self) -> set[str]:
        from credits.web import csp

        marker = csp.payment_page(_noop).__code__  # every payment_page wrapper runs this code object
        return {name for name, view in self.app.view_functions.items() if _wraps_code(view, marker)}

    def pages(self) -> list[str]:
        """Paths of the GET routes whose view is decorated with credits.web.csp.payment_page."""
        endpoints = self._payment_endpoints()
        adapter = self.app.url_map.bind("localhost")
        paths: set[str] = set()
        for rule in self.app.url_map.iter_rules():
            if rule.endpoint in endpoints and "GET" in (rule.methods or ()):
                paths.add(_build(adapter, rule))
        return sorted(paths)

    def script_files(self) -> list[str]:
        """URL paths of the .js files in the static folders of the blueprints that serve payment pages."""
        blueprints = {endpoint.rpartition(".")[0] for endpoint in self._payment_endpoints() if "." in endpoint}
        adapter = self.app.url_map.bind("localhost")
        paths: list[str] = []
        for name in sorted(blueprints):
            folder = getattr(self.app.blueprints.get(name), "static_folder", None)
            if not folder or f"{name}.static" not in self.app.view_functions:
                continue
            for file in sorted(Path(folder).rglob("*.js")):
                relative = file.relative_to(folder).as_posix()
                paths.append(str(adapter.build(f"{name}.static", {"filename": relative}, method="GET")))
        return paths

    def get(self, path: str) -> Fetched:
        client = self.app.test_client(use_cookies=False)
        headers = {"User-Agent": MONITOR_AGENT, "Accept": "text/html,*/*"}
        if self._cookie:
            headers["Cookie"] = self._cookie
        # A fresh context: otherwise a request made inside an app context of this app (the CLI's) reuses it,
        # and `g` of one page (signed in) leaks into the next (a signed-out page would render signed in).
        response = contextvars.Context().run(client.get, path, base_url=self.origin, headers=headers)
        try:
            names = {name.lower() for name, _value in response.headers.items()}
            values = {name: ", ".join(response.headers.getlist(name)) for name in names}
            return Fetched(response.status_code, values, response.get_data())
        finally:
            response.close()  # static files are streamed from an open file


def _noop() -> None:
    return None


def _wraps_code(view: Any, code: Any) -> bool:
    seen = 0
    while view is not None and seen < 20:
        if getattr(view, "__code__", None) is code:
            return True
        view, seen = getattr(view, "__wrapped__", None), seen + 1
    return False


def _build(adapter: Any, rule: Any) -> str:
    for value in (PLACEHOLDER, 0):
        try:
            return str(adapter.build(rule.endpoint, dict.fromkeys(rule.arguments, value), method="GET"))
        except Exception:  # noqa: BLE001, S112 - werkzeug's BuildError or a converter refusing the value
            continue
    return str(rule.rule)


# ---------------------------------------------------------------- normalising and fingerprinting

_NONCE_IN_CSP = re.compile(r"'nonce-[^']*'")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")
_TOKEN_NAME = re.compile(r"(?i)csrf|token|nonce|secret")
_URL_ATTRS = frozenset({"href", "src", "action", "formaction", "data", "poster", "srcset"})
_SCRIPT_ATTRS = ("type", "async", "defer", "integrity", "crossorigin", "nomodule")


def normalise_text(text: str) -> str:
    """Text as the fingerprint sees it: whitespace collapsed, numbers "#", email addresses "[email]"."""
    text = _EMAIL.sub("[email]", text)
    return _SPACE.sub(" ", _NUMBER.sub("#", text)).strip()


def normalise_header(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if name.startswith("content-security-policy"):
        value = _NONCE_IN_CSP.sub("'nonce-[nonce]'", value)
    return _SPACE.sub(" ", value).strip()


def _normalise_url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.query:
        return value
    query = [(k, "[token]" if _TOKEN_NAME.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="[]")))


def _normalise_attrs(tag: str, attrs: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    names = {name: value for name, value in attrs}
    volatile_value = tag == "input" and bool(_TOKEN_NAME.search(names.get("name") or ""))
    out: list[tuple[str, str | None]] = []
    for name, value in sorted(attrs, key=lambda a: a[0]):
        if value is not None:
            if name == "nonce":
                value = "[nonce]"
            elif _TOKEN_NAME.search(name) or (name == "value" and volatile_value):
                value = "[token]"
            elif name in _URL_ATTRS:
                value = _normalise_url(value)
        out.append((name, value))
    return out


def _render_tag(tag: str, attrs: list[tuple[str, str | None]], close: str = ">") -> str:
    rendered = "".join(f" {n}" if v is None else f' {n}="{v}"' for n, v in attrs)
    return f"<{tag}{rendered}{close}"


@dataclass
class _Script:
    attrs: list[tuple[str, str | None]]
    text: list[str] = field(default_factory=list)


class _Canonical(HTMLParser):
    """Canonical markup lines and the page's scripts (src or inline text), in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.scripts: list[_Script] = []
        self._script: _Script | None = None
        self._raw: str | None = None  # inside <style>: keep the text as it is (only whitespace collapsed)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        normal = _normalise_attrs(tag, attrs)
        self.lines.append(_render_tag(tag, normal))
        if tag == "script":
            self._script = _Script(normal)
        elif tag == "style":
            self._raw = tag

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        normal = _normalise_attrs(tag, attrs)
        self.lines.append(_render_tag(tag, normal, " />"))
        if tag == "script":
            self.scripts.append(_Script(normal))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            script, self._script = self._script, None
            self.scripts.append(script)
            if "".join(script.text).strip():
                self.lines.append(f"(inline script {_inline_hash(''.join(script.text))})")
        if tag == self._raw:
            self._raw = None
        self.lines.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.text.append(data)
            return
        text = _SPACE.sub(" ", data).strip() if self._raw else normalise_text(data)
        if text:
            self.lines.append(text)

    def handle_comment(self, data: str) -> None:
        self.lines.append(f"<!-- {normalise_text(data)} -->")

    def handle_decl(self, decl: str) -> None:
        self.lines.append(f"<!{decl}>")


def _inline_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@dataclass(frozen=True)
class Capture:
    """What a page served, normalised: `parts` (status, scripts, headers, markup) and their fingerprint."""

    path: str
    parts: dict[str, Any]
    #: Same-origin script paths the page loads (fetched and hashed; not part of the fingerprint).
    script_paths: frozenset[str] = frozenset()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.parts)


def fingerprint(parts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class PageUnavailable(Exception):
    """The monitor could not see the page itself (a redirect, a server error)."""


def capture(source: PageSource, path: str) -> Capture:
    """Fetch `path` and the same-origin scripts it loads; return its normalised parts.

    Raises PageUnavailable when the answer is a redirect (the page was not shown: sign-in, a closed monitor
    account) or a server error: neither is the page, and neither is recorded as a fingerprint.
    """
    page = source.get(path)
    if 300 <= page.status < 400 or page.status >= 500:
        where = " (to sign-in)" if "login" in page.headers.get("location", "") else ""
        raise PageUnavailable(f"{path} answered {page.status}{where}")
    parser = _Canonical()
    parser.feed(page.body.decode("utf-8", errors="replace"))
    parser.close()
    page_url = source.origin + path
    fetched: set[str] = set()
    scripts = [_describe_script(source, page_url, script, fetched) for script in parser.scripts]
    headers = {name: normalise_header(name, page.headers.get(name)) for name in SECURITY_HEADERS}
    return Capture(path, {"status": page.status, "scripts": scripts, "headers": headers,
                          "markup": "\n".join(parser.lines)}, frozenset(fetched))


def capture_script_files(source: PageSource, paths: list[str]) -> Capture:
    """The pseudo-page SCRIPT_FILES_PAGE: each script file (path and SHA-256 of what the app serves)."""
    scripts = []
    for path in paths:
        answer = source.get(path)
        digest = hashlib.sha256(answer.body).hexdigest() if answer.status == 200 else f"status={answer.status}"
        scripts.append(f"{path} sha256={digest}" if answer.status == 200 else f"{path} {digest}")
    return Capture(SCRIPT_FILES_PAGE, {"status": 200, "scripts": scripts, "headers": {}, "markup": ""},
                   frozenset(paths))


def _describe_script(source: PageSource, page_url: str, script: _Script, fetched: set[str]) -> str:
    attrs = dict(script.attrs)
    extra = "".join(f" {n}={attrs[n]}" if attrs[n] is not None else f" {n}"
                    for n in _SCRIPT_ATTRS if n in attrs)
    src = attrs.get("src")
    if src is None:
        return f"inline {_inline_hash(''.join(script.text))}{extra}"
    url = urljoin(page_url, src)
    if _origin_of(url) != source.origin:
        return f"{src}{extra} (third party: URL only)"
    parts = urlsplit(url)
    fetched.add(parts.path)
    answer = source.get(parts.path + (f"?{parts.query}" if parts.query else ""))
    if answer.status != 200:
        return f"{src}{extra} status={answer.status}"
    return f"{src}{extra} sha256={hashlib.sha256(answer.body).hexdigest()}"


# ---------------------------------------------------------------- diffs


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Readable differences from `old` parts to `new` parts: status, scripts, headers, then markup lines."""
    if old is None:
        return ["(no earlier version to compare with)"]
    lines: list[str] = []
    if old.get("status") != new.get("status"):
        lines.append(f"status: {old.get('status')} -> {new.get('status')}")
    before, after = list(old.get("scripts", [])), list(new.get("scripts", []))
    lines += [f"script removed: {s}" for s in before if s not in after]
    lines += [f"script added: {s}" for s in after if s not in before]
    if sorted(before) == sorted(after) and before != after:
        lines.append("scripts: same scripts, other order: " + " | ".join(after))
    old_headers, new_headers = old.get("headers", {}), new.get("headers", {})
    for name in sorted(set(old_headers) | set(new_headers)):
        a, b = old_headers.get(name), new_headers.get(name)
        if a != b:
            lines.append(f"header {name}: {a if a is not None else '(absent)'} -> {b if b is not None else '(absent)'}")
    markup = [line for line in difflib.unified_diff(str(old.get("markup", "")).splitlines(),
                                                    str(new.get("markup", "")).splitlines(), lineterm="", n=0)
              if not line.startswith(("---", "+++", "@@"))]
    lines += [f"markup {line}" for line in markup]
    if len(lines) > _MAX_DIFF_LINES:
        lines = [*lines[:_MAX_DIFF_LINES], f"... and {len(lines) - _MAX_DIFF_LINES} more lines"]
    return lines


# ---------------------------------------------------------------- the monitor's session


def _ensure_monitor(s: Session) -> int:
    """The monitor account's user id, created (with its wallet) in the caller's transaction if missing."""
    from credits.accounts import service as accounts
    from credits.accounts.models import User
    from credits.ledger.service import _open_wallet

    bidx = accounts.email_index(MONITOR_EMAIL)
    found = s.execute(select(User.id).where(User.email_bidx == bidx)).scalar()
    if found is not None:
        return int(found)
    now = clock.now()
    user_id: int = s.execute(insert(User).values(
        email_enc="", email_bidx=bidx, password_hash=None, role="customer", status="restricted", created_at=now,
        email_verified_at=now).returning(User.id)).scalar_one()
    s.execute(update(User).where(User.id == user_id).values(
        email_enc=crypto.encrypt(MONITOR_EMAIL, "users", "email_enc", user_id)))
    _open_wallet(s, user_id, config.current().default_currency, now)
    log.info("created the payment-page monitor account (user %s)", user_id)
    return user_id


def open_monitor_session() -> tuple[int, str]:
    """Create a web session (second factor passed) for the monitor account, creating the account on first
    use; return (session id, token). The caller deletes it with `close_monitor_session`."""
    from credits.accounts import sessions

    for attempt in (1, 2):
        try:
            with unit_of_work() as uow:
                user_id = _ensure_monitor(uow.session)
                new = sessions.create(uow.session, user_id, kind="web", mfa_ok=True, user_agent=MONITOR_AGENT)
                uow.commit()
                return new.info.id, new.token
        except IntegrityError:
            if attempt == 2:
                raise  # pragma: no cover - created by another process between two attempts, twice
    raise AssertionError("unreachable")  # pragma: no cover


def close_monitor_session(session_id: int) -> None:
    """Delete the monitor's session (it is synthetic: nothing to keep for the customer's session list)."""
    from credits.accounts.models import Session as WebSession

    with unit_of_work() as uow:
        uow.session.execute(delete(WebSession).where(WebSession.id == session_id))
        uow.commit()


@contextmanager
def monitor_source(app: Any) -> Iterator[AppPageSource]:
    """An AppPageSource signed in as the monitor for the block."""
    session_id, token = open_monitor_session()
    try:
        yield AppPageSource(app, token)
    finally:
        close_monitor_session(session_id)


# ---------------------------------------------------------------- checking and recording


@dataclass(frozen=True)
class PageResult:
    """The outcome of checking one page. outcome: ok (matches the baseline; also when the first check just
    recorded it, `baseline_recorded`), changed (differs from the accepted baseline), error (not seen)."""

    path: str
    outcome: str
    fingerprint: str | None = None
    baseline: str | None = None
    baseline_recorded: bool = False
    alerted: bool = False
    changes: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class CheckReport:
    pages: list[PageResult]

    @property
    def changed(self) -> bool:
        return any(p.outcome == "changed" for p in self.pages)

    @property
    def errors(self) -> bool:
        return any(p.outcome == "error" for p in self.pages)

    def counts(self) -> dict[str, int]:
        return {
            "pages": len(self.pages),
            "ok": sum(p.outcome == "ok" for p in self.pages),
            "changed": sum(p.outcome == "changed" for p in self.pages),
            "alerts": sum(p.alerted for p in self.pages),
            "baselines": sum(p.baseline_recorded for p in self.pages),
            "errors": sum(p.outcome == "error" for p in self.pages),
        }


def check(source: PageSource) -> CheckReport:
    """Check every payment page of `source` and record each result (one transaction per page).

    Script files of the pages' static folders that no checked page loads (a page's script shown only in a
    state the monitor cannot reach, such as pay.js behind a valid pay link) are checked as the pseudo-page
    SCRIPT_FILES_PAGE, so that each script file is watched exactly once.
    """
    results = []
    loaded: set[str] = set()
    for path in source.pages():
        try:
            captured = capture(source, path)
        except PageUnavailable as exc:
            results.append(record_error(path, str(exc)))
            continue
        loaded |= captured.script_paths
        results.append(record(captured))
    others = [path for path in source.script_files() if path not in loaded]
    if others and any(r.outcome == "error" for r in results):
        # Which files the unseen page loads is unknown: checking the rest now would report a false change.
        results.append(record_error(SCRIPT_FILES_PAGE, "not checked: a payment page could not be seen"))
    elif others:
        results.append(record(capture_script_files(source, others)))
    return CheckReport(results)


def _dialect(s: Session) -> str:
    return str(s.get_bind().dialect.name)


def _page_row(s: Session, path: str, now: datetime) -> Any:
    s.execute(insert_for(_dialect(s))(PaymentPage).values(path=path, created_at=now)
              .on_conflict_do_nothing(index_elements=["path"]))
    return s.execute(select(P).where(P.c.path == path).with_for_update()).one()


def record_error(path: str, message: str) -> PageResult:
    """Note that the check could not see `path`; logs a WARNING. No alert: nothing was seen to change."""
    now = clock.now()
    with unit_of_work() as uow:
        page = _page_row(uow.session, path, now)
        uow.session.execute(update(P).where(P.c.id == page.id).values(
            last_checked_at=now, last_outcome="error", last_error=message[:200]))
        uow.commit()
    log.warning("payment page check: %s", message)
    return PageResult(path, "error", error=message)


def record(captured: Capture) -> PageResult:
    """Record a capture of a page: the first one becomes the baseline; one that differs from the accepted
    baseline raises an alert the first time that fingerprint is seen unaccepted (security event
    `payment_page_changed`, an email to every active security officer, or admin when there is none, and a
    WARNING log line); later checks of the same fingerprint only report it.
    """
    now = clock.now()
    fp = captured.fingerprint
    path = captured.path
    with unit_of_work() as uow:
        s = uow.session
        page = _page_row(s, path, now)
        s.execute(insert_for(_dialect(s))(PaymentPageVersion).values(
            page_id=page.id, fingerprint=fp, parts=json.dumps(captured.parts, sort_keys=True), first_seen_at=now,
            last_seen_at=now).on_conflict_do_nothing(index_elements=["page_id", "fingerprint"]))
        version = s.execute(select(V).where(V.c.page_id == page.id, V.c.fingerprint == fp)).one()
        values: dict[str, Any] = {"current_fingerprint": fp, "last_checked_at": now, "last_error": None}
        s.execute(update(V).where(V.c.id == version.id).values(last_seen_at=now))
        if page.baseline_fingerprint is None:
            values.update(last_outcome="ok", baseline_fingerprint=fp, baseline_accepted_at=now,
                          baseline_reason="first check")
            s.execute(update(P).where(P.c.id == page.id).values(**values))
            audit.record(s, f"job:{JOB_NAME}", "payment_page.baseline", f"payment_page:{path}", fingerprint=fp)
            uow.commit()
            log.info("payment page %s: baseline recorded (%s)", path, fp[:12])
            return PageResult(path, "ok", fp, fp, baseline_recorded=True)
        baseline = str(page.baseline_fingerprint)
        if fp == baseline:
            s.execute(update(P).where(P.c.id == page.id).values(last_outcome="ok", **values))
            uow.commit()
            return PageResult(path, "ok", fp, baseline)
        s.execute(update(P).where(P.c.id == page.id).values(last_outcome="changed", **values))
        old = s.execute(select(V.c.parts).where(V.c.page_id == page.id, V.c.fingerprint == baseline)).scalar()
        changes = tuple(diff(json.loads(old) if old else None, captured.parts))
        # Conditional: of two checks racing on one new fingerprint, exactly one raises the alert.
        first = cast(CursorResult[Any], s.execute(
            update(V).where(V.c.id == version.id, V.c.alerted_at.is_(None)).values(alerted_at=now))).rowcount == 1
        if first:
            _alert(s, page.id, path, fp, baseline, changes)
        uow.commit()
    if first:
        log.warning("payment page %s changed: fingerprint %s differs from the accepted baseline %s: %s", path,
                    fp[:12], baseline[:12], "; ".join(changes[:5])[:1000])
    else:
        log.info("payment page %s still differs from its accepted baseline (%s, alerted before)", path, fp[:12])
    return PageResult(path, "changed", fp, baseline, alerted=first, changes=changes)


def officers(s: Session) -> list[int]:
    """Ids of the active security officers; of the active admins when there is none."""
    from credits.accounts.models import User

    rows = s.execute(select(User.id, User.role).where(User.role.in_(OFFICER_ROLES), User.status == "active")
                     .order_by(User.id)).all()
    chosen = [r.id for r in rows if r.role == "security_officer"] or [r.id for r in rows]
    return [int(i) for i in chosen]


def _alert(s: Session, page_id: int, path: str, fp: str, baseline: str, changes: tuple[str, ...]) -> None:
    from credits.notify import notices
    from credits.security import events

    events.record(s, "payment_page_changed", detail=f"page={path[:100]} fingerprint={fp[:16]} baseline={baseline[:16]}")
    recipients = officers(s)
    for user_id in recipients:
        notices.notify(s, user_id, "payment_page_changed",
                       dedupe_key=f"payment_page_changed:{page_id}:{fp[:40]}:{user_id}", page=path,
                       fingerprint=fp, baseline_fingerprint=baseline, changes=list(changes),
                       accept_command=f"flask --app wsgi payments page-accept {path} --by YOUR_EMAIL --reason TEXT")
    if not recipients:
        log.error("payment page %s changed and there is no active security officer or admin to tell", path)


# ---------------------------------------------------------------- accepting a change


@dataclass(frozen=True)
class Accepted:
    path: str
    fingerprint: str
    previous: str | None
    changed: bool


def accept(path: str, *, by: str, reason: str, fingerprint_prefix: str | None = None) -> Accepted:
    """Make the page's current fingerprint its accepted baseline, audit-logged with who and why.

    `by` is the email of an active security officer or admin (ValidationError otherwise); `reason` is
    required. With `fingerprint_prefix`, the current fingerprint must start with it (Conflict otherwise:
    the page changed again since it was reviewed). NotFound for a page never checked. Accepting the
    baseline again changes nothing and is not logged.
    """
    from credits.accounts import service as accounts
    from credits.accounts.models import User
    from credits.security import events

    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("a reason is required", field="reason")
    path = path if path.startswith("/") or path == SCRIPT_FILES_PAGE else f"/{path}"
    with unit_of_work() as uow:
        s = uow.session
        staff = s.execute(select(User.id, User.role, User.status)
                          .where(User.email_bidx == accounts.email_index(by))).first()
        if staff is None or staff.role not in OFFICER_ROLES or staff.status != "active":
            raise ValidationError("--by must be the email of an active security officer or admin", field="by")
        page = s.execute(select(P).where(P.c.path == path).with_for_update()).first()
        if page is None or page.current_fingerprint is None:
            raise NotFound(f"no check of {path[:100]} has been recorded")
        fp = str(page.current_fingerprint)
        if fingerprint_prefix and not fp.startswith(fingerprint_prefix.lower()):
            raise Conflict(f"the current fingerprint of {path[:100]} is {fp[:12]}, not {fingerprint_prefix[:64]}")
        previous = page.baseline_fingerprint
        if previous == fp:
            return Accepted(path, fp, previous, changed=False)
        now = clock.now()
        s.execute(update(P).where(P.c.id == page.id).values(
            baseline_fingerprint=fp, baseline_accepted_at=now, baseline_accepted_by=staff.id,
            baseline_reason=reason[:500], last_outcome="ok"))
        audit.record(s, f"user:{staff.id}", "payment_page.accept", f"payment_page:{path}", fingerprint=fp,
                     previous=previous, reason=reason[:500])
        events.record(s, "payment_page_accepted", user_id=staff.id,
                      detail=f"page={path[:100]} fingerprint={fp[:16]} previous={(previous or '')[:16]}")
        uow.commit()
    log.info("payment page %s: fingerprint %s accepted by user %s", path, fp[:12], staff.id)
    return Accepted(path, fp, previous, changed=True)


# ---------------------------------------------------------------- running


def run(app: Any) -> CheckReport:
    """Check every payment page of `app` as the monitor account."""
    with monitor_source(app) as source:
        return check(source)


_app_lock = threading.Lock()
_app_built: tuple[Any, Any] | None = None


def _job_app() -> Any:
    """The app the job fetches from: one per process and settings (scheduler threads have no app context)."""
    global _app_built
    cfg = config.current()
    with _app_lock:
        if _app_built is None or _app_built[0] is not cfg:
            from credits import create_app

            _app_built = (cfg, create_app(cfg))
        return _app_built[1]


def run_job() -> dict[str, int]:
    """The `check-payment-pages` job: check every payment page; return the counts."""
    return run(_job_app()).counts()
