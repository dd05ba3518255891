"""The customer web pages (credits/store/views.py) without a browser: CSRF on every form (K81), nothing changed by
a GET or by bad input, security headers and the strict CSP (K80, I56), the neutral date-of-birth entry (G49) and
the under-13 refusal through the sign-up form (G50). tests/browser drives the same pages in Chromium.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from credits.web.csp import payment_page_policy
from tests.conftest import table_snapshot
from tests.integration.accounts_helpers import PASSWORD, outbox, register

SIGNED_OUT_GETS = ["/signup", "/login", "/forgot-password", "/reset-password?token=x" + "y" * 30,
                   "/verify-email?token=x" + "y" * 30]
SIGNED_IN_GETS = ["/dashboard", "/buy", "/settings/security", "/settings/mfa", "/settings/sessions"]
SIGNED_OUT_POSTS = ["/signup", "/login", "/forgot-password", "/reset-password", "/verify-email"]
SIGNED_IN_POSTS = ["/logout", "/login/mfa", "/settings/security/compromised", "/settings/mfa",
                   "/settings/mfa/confirm", "/settings/sessions/revoke-others", "/settings/sessions/1/revoke"]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def page_sign_in(client: Any, email: str = "ada@example.com") -> str:
    """Register through the API, sign in through the login page; return the session's form token."""
    register(client, email)
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"csrf_token": token, "email": email, "password": PASSWORD})
    assert r.status_code == 303 and r.headers["Location"].endswith("/dashboard"), r.text
    return csrf_of(client.get("/dashboard").text)


def test_K81_every_page_form_refuses_a_post_without_its_csrf_token(client, database):
    page_sign_in(client)
    before = table_snapshot(database)
    other = client.application.test_client()  # a browser that never saw our forms
    for path in SIGNED_OUT_POSTS:
        for c, data in ((other, {}), (client, {}), (client, {"csrf_token": "forged"})):
            r = c.post(path, data={"email": "ada@example.com", "password": PASSWORD, **data})
            assert r.status_code == 400, (path, r.status_code)
            assert "This form has expired" in r.text
    for path in SIGNED_IN_POSTS:
        for data in ({}, {"csrf_token": "forged"}):
            r = client.post(path, data={"password": PASSWORD, "code": "123456", **data})
            assert r.status_code == 400, (path, r.status_code)
    assert table_snapshot(database) == before
    assert client.get("/dashboard").status_code == 200  # still signed in: nothing was revoked


def test_K81_pages_change_nothing_on_get(client, database):
    register(client)
    before = table_snapshot(database)
    token = outbox("verify_email")[-1][2]["token"]
    r = client.get(f"/verify-email?token={token}")  # a mail scanner following the link
    assert r.status_code == 200 and "Confirm my email address" in r.text
    for path in SIGNED_OUT_GETS:
        assert client.get(path).status_code == 200, path
    assert table_snapshot(database) == before
    r = client.post("/verify-email", data={"csrf_token": csrf_of(r.text), "token": token})
    assert r.status_code == 200 and "Your email address is confirmed" in r.text


def test_signed_in_pages_redirect_to_sign_in_without_a_session(client):
    for path in SIGNED_IN_GETS:
        r = client.get(path)
        assert r.status_code == 302 and r.headers["Location"].endswith("/login"), path


@pytest.mark.parametrize("kind", ["signed_out", "signed_in"])
def test_K80_I56_pages_have_security_headers_no_inline_script_and_no_store(client, kind):
    paths = SIGNED_OUT_GETS
    if kind == "signed_in":
        page_sign_in(client)
        paths = SIGNED_IN_GETS
    for path in paths:
        r = client.get(path)
        assert r.status_code == 200, path
        h = r.headers
        assert "includeSubDomains" in h["Strict-Transport-Security"]
        csp = h["Content-Security-Policy"]
        for directive in ("default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
            assert directive in csp, (path, directive)
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert h["X-Content-Type-Options"] == "nosniff" and h["Referrer-Policy"] == "no-referrer"
        assert "no-store" in h["Cache-Control"], path
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), f"inline script on {path}"
        assert not re.search(r"\son[a-z]+=|\sstyle=", r.text), f"inline handler or style on {path}"


def test_I56_the_buy_page_loads_stripe_js_only_from_the_configured_origin(client, app):
    page_sign_in(client)
    r = client.get("/buy")
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', r.text)
    assert scripts == ["https://js.stripe.com/v3/", "/assets/buy.js"]
    with app.app_context():
        assert r.headers["Content-Security-Policy"] == payment_page_policy()
    with client.get("/assets/buy.js") as js:
        assert js.status_code == 200 and "confirmCardSetup" in js.text


class TestStandInStripe:
    @pytest.fixture
    def settings_overrides(self):
        return {"stripe_api_base": "http://127.0.0.1:9", "stripe_js_url": "http://127.0.0.1:9/js.stripe.com/v3/"}

    def test_I56_the_buy_page_allows_only_the_stand_in_origin(self, client):
        page_sign_in(client)
        r = client.get("/buy")
        assert re.findall(r'<script[^>]*\bsrc="([^"]+)"', r.text) == ["http://127.0.0.1:9/js.stripe.com/v3/",
                                                                       "/assets/buy.js"]
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self' http://127.0.0.1:9;" in csp and "https://js.stripe.com" not in csp


def test_G49_the_sign_up_form_takes_a_free_date_of_birth_without_age_wording(client):
    html = client.get("/signup").text
    form = html[html.index("<form"):html.index("</form>")]
    year = re.search(r'<input id="dob-year"[^>]*>', form).group(0)
    assert "min=" not in year and "max=" not in year and 'type="' not in year  # free text, any year
    day = re.search(r'<input id="dob-day"[^>]*>', form).group(0)
    assert "min=" not in day and "max=" not in day
    assert 'type="checkbox"' not in form
    words = set(re.findall(r"[a-z0-9]+", re.sub(r"<[^>]+>", " ", form).lower()))
    assert not words & {"13", "age", "older", "over", "child", "children", "adult", "minimum"}


def _signup(client, **fields):
    token = csrf_of(client.get("/signup").text)
    body = {"csrf_token": token, "name": "Ada Lovelace", "email": "ada@example.com", "password": PASSWORD,
            "day": "21", "month": "4", "year": "1990", "country": "SG", **fields}
    return client.post("/signup", data=body)


@pytest.mark.parametrize(("fields", "message"), [
    ({"day": "31", "month": "2"}, "That date does not exist"),
    ({"year": "90"}, "year with four digits"),
    ({"day": ""}, "Enter the date as numbers"),
    ({"year": "1850"}, "not a possible date of birth"),
    ({"password": "password1"}, "common or breached"),
    ({"country": "XX"}, "two-letter code"),
    ({"email": "ada@"}, "Enter your email address"),
])
def test_sign_up_form_shows_a_readable_error_and_stores_nothing(client, database, fields, message):
    before = table_snapshot(database)
    r = _signup(client, **fields)
    assert r.status_code == 400
    assert message in re.search(r'id="error">([^<]+)<', r.text).group(1)
    assert f'value="{fields.get("email", "ada@example.com")}"' in r.text  # what was typed stays, not the password
    assert PASSWORD not in r.text
    assert table_snapshot(database) == before


def test_G50_under_13_through_the_form_is_refused_generically_and_blocks_a_retry(client, database, clock):
    before = table_snapshot(database)
    today = clock.now().date()
    r = _signup(client, day=str(today.day), month=str(today.month), year=str(today.year - 10))
    assert r.status_code == 403
    assert "could not create an account" in r.text and "13" not in re.sub(r"<[^>]+>", " ", r.text)
    assert table_snapshot(database) == before
    r = _signup(client, year="1990")  # the same browser, now claiming to be older
    assert r.status_code == 403
    assert table_snapshot(database) == before
    assert _signup(client.application.test_client(), year="1990").status_code == 200


def test_sign_in_page_with_a_second_factor_then_sign_out(client, database):
    from tests.integration.accounts_helpers import enrol_totp, login, totp_now

    register(client)
    r = login(client)
    secret, _codes, _csrf = enrol_totp(client, {"X-CSRF-Token": r.json["csrf_token"]})
    browser = client.application.test_client()
    token = csrf_of(browser.get("/login").text)
    r = browser.post("/login", data={"csrf_token": token, "email": "ada@example.com", "password": "wrong"})
    assert r.status_code == 401 and "Email or password is incorrect" in r.text
    r = browser.post("/login", data={"csrf_token": token, "email": "ada@example.com", "password": PASSWORD})
    assert r.headers["Location"].endswith("/login/mfa")
    assert browser.get("/dashboard").headers["Location"].endswith("/login/mfa")  # the second factor is owed
    mfa_token = csrf_of(browser.get("/login/mfa").text)
    r = browser.post("/login/mfa", data={"csrf_token": mfa_token, "code": "000000"})
    assert r.status_code in (400, 401) and 'id="error"' in r.text
    r = browser.post("/login/mfa", data={"csrf_token": mfa_token, "code": totp_now(secret, 1)})
    assert r.status_code == 303 and r.headers["Location"].endswith("/dashboard")
    session_token = csrf_of(browser.get("/dashboard").text)
    assert session_token != mfa_token  # a new session after the second factor (K76)
    r = browser.post("/logout", data={"csrf_token": session_token})
    assert r.status_code == 303
    assert browser.get("/dashboard").status_code == 302


def test_compromise_report_from_the_security_settings(client, database):
    token = page_sign_in(client)
    r = client.post("/settings/security/compromised", data={"csrf_token": token, "since": "tomorrow"})
    assert r.status_code == 400 and "YYYY-MM-DD" in r.text
    r = client.post("/settings/security/compromised", data={"csrf_token": token, "description": "not me"})
    assert r.status_code == 200
    reference = re.search(r'id="reference">([^<]+)<', r.text).group(1)
    assert reference
    assert client.get("/dashboard").status_code == 302  # this session ended with the others
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"csrf_token": token, "email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 403 and "choose a new password first" in r.text


def test_sessions_page_lists_and_revokes(client, app):
    token = page_sign_in(client)
    other = app.test_client()
    page_sign_in(other)
    html = client.get("/settings/sessions").text
    ids = [int(i) for i in re.findall(r"/settings/sessions/([0-9]+)/revoke", html)]
    assert len(ids) == 2
    r = client.post("/settings/sessions/revoke-others", data={"csrf_token": token})
    assert r.status_code == 303
    assert other.get("/dashboard").status_code == 302
    assert client.get("/dashboard").status_code == 200
    assert client.post("/settings/sessions/999999/revoke", data={"csrf_token": token}).status_code == 404


class TestThrottledForms:
    @pytest.fixture
    def settings_overrides(self):
        return {"register_ip_limit": "2 per hour", "login_ip_limit": "2 per minute"}

    def test_J67_the_page_forms_share_the_per_ip_limits_of_the_api(self, client, database):
        for path in ("/signup", "/login"):
            token = csrf_of(client.get(path).text)
            codes = [client.post(path, data={"csrf_token": token, "email": "x@example.com"}).status_code
                     for _ in range(3)]
            assert codes[:2] != [429, 429] and codes[2] == 429, (path, codes)
            r = client.post(path, data={"csrf_token": token})
            assert r.status_code == 429 and "Too many attempts" in r.text  # a page, not problem+json
