"""Issue 5 in a real browser: sign-up and the verification link, sign-in with a second factor (enrolled on the
MFA page from its QR code's key), and the compromise report followed from a "this wasn't me" link. Emails are
read off the SMTP server that the app's jobs process delivers to.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pyotp
import pytest
from playwright.sync_api import expect

from tests.browser.stack import PASSWORD, Stack, link_in, sign_in, text_of

pytestmark = pytest.mark.browser


def test_G49_sign_up_in_the_browser_then_verify_the_email_from_its_link(browsers: Any, stack: Stack) -> None:
    page = browsers.new_page()
    page.goto("/signup")
    # G49: a free date of birth (typed day and year, any year), no age wording or "I am over..." box before entry.
    form_text = page.locator("form").inner_text().lower()
    for word in ("13", "age", "older", "over", "child", "adult"):
        assert word not in form_text.split(), word
    assert page.locator('input[type="checkbox"]').count() == 0
    assert page.get_by_label("Year").evaluate("e => e.tagName") == "INPUT"
    assert page.get_by_label("Year").get_attribute("min") is None

    email = f"newcomer-{secrets.token_hex(4)}@example.com"
    page.get_by_label("Full name").fill("Sam Newcomer")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Day").fill("29")
    page.get_by_label("Month").select_option(label="February")
    page.get_by_label("Year").fill("1990")  # 1990 had no 29 February: a readable error, nothing stored
    page.get_by_label("Country").fill("GB")
    page.get_by_role("button", name="Create account").click()
    # After a click the old page may still be showing: these checks retry until the new one is in (or time out).
    expect(page.locator("#error")).to_have_text("That date does not exist. Check the day and the month.")
    assert page.get_by_label("Email address").input_value() == email  # the form keeps what was typed

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Year").fill("1992")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

    message = stack.mail.wait_for(email, "/verify-email?token=")
    page.goto(link_in(message, "/verify-email"))  # opening the link changes nothing by itself
    page.get_by_role("button", name="Confirm my email address").click()
    expect(page.get_by_role("heading", name="Your email address is confirmed")).to_be_visible()

    sign_in(page, email)
    assert page.locator("#balance").inner_text() == "0.00 USD"
    assert page.locator("#unverified").count() == 0


def test_sign_in_with_a_second_factor_enrolled_from_the_qr_page(browsers: Any, stack: Stack) -> None:
    email = stack.new_customer("mfa")
    page = browsers.new_page()
    sign_in(page, email)

    page.get_by_role("link", name="Security", exact=True).click()
    page.get_by_role("link", name="Set up an authenticator app").click()
    page.get_by_label("Confirm your password to start").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    qr = page.locator("img#qr")
    assert qr.get_attribute("src").startswith("data:image/svg+xml")
    # The CSP lets the data: image show. decode() waits for it (img.complete may still be false just after the
    # page loads) and fails if the image cannot be shown.
    assert qr.evaluate("img => img.decode().then(() => img.naturalWidth > 0)")
    totp = pyotp.TOTP(page.locator("#secret").inner_text().replace(" ", ""))

    page.get_by_label("Code from the app").fill("12345")
    page.get_by_role("button", name="Turn on two-step verification").click()
    expect(page.locator("#error")).to_be_visible()
    page.get_by_label("Code from the app").fill(totp.now())
    page.get_by_role("button", name="Turn on two-step verification").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/login/mfa")
    # The enrolment used this 30-second step's code (the replay guard refuses it again): the next step's is valid.
    page.get_by_label("Code").fill(totp.at(time.time() + 30))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url("**/dashboard")
    page.goto("/settings/security")
    assert page.locator("#mfa-status").inner_text().startswith("On. 10 recovery codes left")
    assert browsers.csp_violations() == []


def test_P104_compromise_report_from_the_wasnt_me_link_of_a_security_email(browsers: Any, stack: Stack) -> None:
    email = stack.new_customer("victim")
    owner = browsers.new_page(user_agent="OwnerBrowser/1.0")
    sign_in(owner, email)
    intruder = browsers.new_page(user_agent="IntruderBrowser/6.6")
    sign_in(intruder, email)  # a sign-in from a browser not seen before: the owner gets a security notice

    notice = stack.mail.wait_for(email, "/security/compromised?token=")
    assert "IntruderBrowser" in text_of(notice)
    report_page = browsers.new_page()  # the owner reads the mail somewhere else, signed out
    report_page.goto(link_in(notice, "/security/compromised"))
    report_page.get_by_label("Anything support should know? (optional)").fill("I did not sign in from that browser.")
    report_page.get_by_role("button", name="Lock my account").click()
    expect(report_page.locator("#reference")).not_to_be_empty()
    reference = report_page.locator("#reference").inner_text()
    assert reference

    for page in (owner, intruder):  # every session is over
        page.goto("/dashboard")
        page.wait_for_url("**/login")
    intruder.get_by_label("Email address").fill(email)
    intruder.get_by_label("Password").fill(PASSWORD)
    intruder.get_by_role("button", name="Sign in").click()
    expect(intruder.locator("#error")).to_contain_text("choose a new password first")
    assert reference in text_of(stack.mail.wait_for(email, reference))  # the acknowledgement
