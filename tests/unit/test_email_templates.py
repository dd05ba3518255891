"""Email templates (templates/email): every catalog entry renders from its required keys alone; HTML escapes;
security notices carry the "this wasn't me" link."""

from __future__ import annotations

import pytest

from credits.notify import render
from credits.notify.catalog import CATALOG, SECURITY_NOTICES

SAMPLE = {
    "link": "https://credits.example.net/x?token=abc&y=1", "expires_at": "2026-11-24T12:00:00Z",
    "new_email": "new@example.org", "old_email": "old@example.org", "to_old_address": True,
    "at": "2026-11-22T12:00:00Z", "change": "enabled", "amount": "5.00", "currency": "USD",
    "to_account": "1234567890", "from_account": "0987654321", "reference": "SR-ABCD-EFGH", "entries": 2,
    "froze_money": True, "answer_by": "2026-12-07T12:00:00Z", "purchase_id": "42", "reason": "card declined",
    "disabled": False, "days_left": 3,
}
WASNT_ME = "https://credits.example.net/security/compromised?token=T0k3n"


def _required(name: str) -> dict[str, object]:
    context: dict[str, object] = {k: SAMPLE[k] for k in CATALOG[name].required}
    if name in SECURITY_NOTICES:
        context["wasnt_me_url"] = WASNT_ME
    return context


def test_every_template_file_is_in_the_catalog_and_back():
    files = {p.name.split(".")[0] for p in render.EMAIL_TEMPLATES.iterdir() if not p.name.startswith("_")}
    assert files == set(CATALOG)
    for name in CATALOG:
        assert (render.EMAIL_TEMPLATES / f"{name}.txt").exists(), name


def test_issue_templates_exist():
    wanted = {"verify_email", "password_reset", "new_sign_in", "password_changed", "mfa_changed", "email_changed",
              "transfer_sent", "transfer_received", "compromise_report", "unauthorized_transaction_report",
              "purchase_receipt", "auto_recharge_failed", "auto_recharge_action_required", "expiry_reminder"}
    assert wanted <= set(CATALOG)
    assert {"new_sign_in", "password_changed", "mfa_changed", "email_changed", "transfer_sent",
            "transfer_received"} <= SECURITY_NOTICES


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_renders_from_required_keys_alone(name):
    out = render.render(name, _required(name))
    assert out.subject and "\n" not in out.subject and "{" not in out.subject
    assert out.text.strip() and "{{" not in out.text
    assert out.html is None or "{{" not in out.html


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_a_missing_required_key_fails_rendering(name):
    for key in CATALOG[name].required:
        context = _required(name)
        del context[key]
        with pytest.raises(render.TemplateError):
            render.render(name, context)


@pytest.mark.parametrize("name", sorted(SECURITY_NOTICES))
def test_security_notices_carry_the_wasnt_me_link(name):
    out = render.render(name, _required(name))
    assert WASNT_ME in out.text
    assert out.html is not None and f'href="{WASNT_ME}"' in out.html
    without = _required(name)
    del without["wasnt_me_url"]
    with pytest.raises(render.TemplateError):
        render.render(name, without)


def test_html_is_escaped_text_is_not():
    out = render.render("verify_email", {**_required("verify_email"), "name": '<img src=x onerror="alert(1)">'})
    assert '<img src=x onerror="alert(1)">' in out.text
    assert "<img" not in out.html and "&lt;img" in out.html
    assert 'href="https://credits.example.net/x?token=abc&amp;y=1"' in out.html


def test_subject_cannot_carry_a_header_injection():
    out = render.render("transfer_sent", {**_required("transfer_sent"), "amount": "5\r\nBcc: evil@example.com"})
    assert "\r" not in out.subject and "\n" not in out.subject
    message = render.compose(out, to="a@example.com", sender="credits@example.net")
    assert message["Bcc"] is None


def test_times_are_shown_readably():
    assert render.when("2026-11-22T12:00:00Z") == "22 Nov 2026, 12:00 UTC"
    assert render.when("2026-12-07") == "7 Dec 2026"
    assert render.when("not a time") == "not a time"
