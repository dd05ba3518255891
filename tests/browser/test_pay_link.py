"""Issue 4 in a real browser: the emailed pay link of an auto-recharge the bank wants confirmed (DESIGN §6).

A customer keeps a 3-D Secure card (4000 0025 0000 3155) and turns auto-recharge on below their balance; the
stack's jobs process charges it off-session, localstripe answers requires_action, and the customer is emailed a
single-use link. Opened in a browser that is not signed in, the link shows the amount; "Confirm payment" runs
localstripe's 3-D Secure dialog through Stripe.js, the server settles, and the balance rises by exactly that
amount. The link then says it was used.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, cast

import pytest
import stripe

from credits.payments.localstripe_server import TEST_SECRET_KEY
from tests.browser.stack import PASSWORD, Stack, link_in

pytestmark = pytest.mark.browser

THREE_D_SECURE = "4000002500003155"


def token_of(stack: Stack, email: str) -> str:
    status, body = stack.api("POST", "/api/v1/auth/token", {"email": email, "password": PASSWORD})
    assert status == 201, body
    return str(body["token"])


def keep_card(stack: Stack, token: str, number: str) -> str:
    """What /buy's Stripe.js does for a new card (3-D Secure passed at set-up), then keep it: the method id."""
    status, setup = stack.api("POST", "/api/v1/me/payment-methods", {}, token=token)
    assert status == 201, setup
    raw = stripe.StripeClient(TEST_SECRET_KEY, base_addresses={"api": stack.stripe_url}, max_network_retries=0)
    card = {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    pm = raw.v1.payment_methods.create(cast(Any, {"type": "card", "card": card})).id
    si = raw.v1.setup_intents.confirm(setup["setup_intent"], {"payment_method": pm})
    if si.status == "requires_action":
        si = raw.v1.setup_intents.confirm(setup["setup_intent"])  # "Complete authentication"
    assert si.status == "succeeded", si
    status, saved = stack.api("POST", "/api/v1/me/payment-methods", {"payment_method": pm}, token=token)
    assert status == 201, saved
    return pm


def auto_recharge_status(stack: Stack, account_number: str) -> list[str]:
    with sqlite3.connect(f"file:{stack.workdir / 'browser.db'}?mode=ro", uri=True, timeout=10) as conn:
        return [row[0] for row in conn.execute(
            "SELECT p.status FROM purchases p JOIN wallets w ON w.id = p.wallet_id "
            "WHERE w.account_number = ? AND p.kind = 'auto_recharge' ORDER BY p.id", (account_number,))]


def test_a_pay_link_confirms_an_auto_recharge_with_3d_secure(browsers: Any, stack: Stack) -> None:
    email = stack.new_customer("paylink")
    token = token_of(stack, email)
    pm = keep_card(stack, token, THREE_D_SECURE)
    status, settings = stack.api("PUT", "/api/v1/me/auto-recharge", {
        "enabled": True, "threshold": "5.00", "amount": "10.00", "payment_method": pm, "monthly_cap": "100.00"},
        token=token)
    assert status == 200, settings
    start = stack.wallet(email)
    assert start["balance"] == "0.000000"

    # The jobs process (every job every second) tries the card off-session; the bank wants the customer.
    message = stack.mail.wait_for(email, "/pay?token=")
    link = link_in(message, "/pay")
    assert link.startswith(f"{stack.base_url}/pay?token=")
    assert auto_recharge_status(stack, start["account_number"]) == ["requires_action"]
    assert stack.wallet(email)["balance"] == "0.000000"

    page = browsers.new_page()  # a browser that is not signed in: the link is the credential
    response = page.goto(link)
    assert response is not None and response.status == 200
    assert page.get_by_role("heading", level=1).inner_text() == "Confirm your payment"
    assert page.locator("#amount").inner_text() == "10.00 USD"
    assert email not in page.content() and start["account_number"] not in page.content()
    scripts = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert scripts == [stack.localstripe.js_url, f"{stack.base_url}/assets/pay.js"]

    page.get_by_role("button", name="Confirm payment").click()
    # localstripe's Stripe.js asks "Complete authentication" or "Fail authentication".
    result = page.locator("#result")
    deadline = time.monotonic() + 30
    dialogs = 0
    while not result.is_visible():
        assert time.monotonic() < deadline, "no result after the 3-D Secure challenge"
        assert not page.locator("#error").is_visible(), page.locator("#error").inner_text()
        button = page.get_by_role("button", name="Complete authentication")
        if button.count():
            button.click()
            dialogs += 1
        else:
            page.wait_for_timeout(100)
    assert dialogs == 1
    assert result.inner_text() == "10.00 USD was added to your account."
    assert browsers.csp_violations() == []

    wallet = stack.wallet(email)
    assert wallet["balance"] == "10.000000"  # exactly the auto-recharge, once
    assert [(lot["source"], lot["granted"]) for lot in wallet["lots"]] == [("auto_recharge", "10.000000")]
    assert auto_recharge_status(stack, start["account_number"]) == ["succeeded"]

    # The link works once.
    again = page.goto(link)
    assert again is not None and again.status == 404
    assert page.get_by_role("heading", level=1).inner_text() == "This payment link has expired or was already used"
    assert not page.get_by_role("button", name="Confirm payment").count()
    assert stack.wallet(email)["balance"] == "10.000000"
