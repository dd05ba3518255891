"""Issue 4 in a real browser: buying credit on /buy through localstripe's Stripe.js (DESIGN §6).

The page gets a SetupIntent, `stripe.confirmCardSetup` hands the card to (local)Stripe, the server charges it,
and `stripe.confirmCardPayment` runs only when the bank wants 3-D Secure. Each test checks what the customer
sees and, through the JSON API, what the ledger holds.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.stack import Stack, sign_in

pytestmark = pytest.mark.browser

VISA = "4242424242424242"
THREE_D_SECURE = "4000002500003155"
DECLINED = "4000000000000341"


def fill_card(page: Any, number: str) -> None:
    """Type a card into localstripe's card element (plain inputs named by their placeholders)."""
    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill(number)
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("34")  # two digits: the element prefixes "20"
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("10115")


def start_purchase(page: Any, number: str, amount: str = "10.00") -> None:
    page.goto("/buy")
    page.locator(f'input[name="amount"][value="{amount}"]').check()
    fill_card(page, number)
    page.get_by_role("button", name="Pay").click()


def test_buy_10_with_a_card_through_stripe_js_raises_the_balance(browsers: Any, stack: Stack) -> None:
    email = stack.new_customer("buyer")
    page = browsers.new_page()
    sign_in(page, email)
    assert page.locator("#balance").inner_text() == "0.00 USD"

    start_purchase(page, VISA)

    result = page.locator("#result-text")
    result.wait_for()
    assert "10.00 USD was added to your account" in result.inner_text()
    assert "Your balance is now 10.00 USD" in result.inner_text()
    assert "This credit expires on" in result.inner_text()
    assert page.locator("#balance").inner_text() == "10.00 USD"
    # I56: the page ran Stripe.js from the configured origin only, under a CSP it did not break.
    scripts = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert scripts == [stack.localstripe.js_url, f"{stack.base_url}/assets/buy.js"]
    assert browsers.csp_violations() == []

    page.goto("/dashboard")
    assert page.locator("#balance").inner_text() == "10.00 USD"
    lots = page.locator("#lots tbody tr")
    assert lots.count() == 1
    assert lots.first.locator(".expires").inner_text().strip() != ""
    wallet = stack.wallet(email)
    assert wallet["balance"] == "10.000000"
    assert [(lot["source"], lot["granted"]) for lot in wallet["lots"]] == [("purchase", "10.000000")]
    assert wallet["lots"][0]["expires_at"]


def test_a_3d_secure_card_passes_its_challenge_and_is_credited(browsers: Any, stack: Stack) -> None:
    email = stack.new_customer("secure")
    page = browsers.new_page()
    sign_in(page, email)

    start_purchase(page, THREE_D_SECURE)

    # localstripe's Stripe.js shows its 3-D Secure dialog for the SetupIntent and again for the payment.
    dialogs = 0
    result = page.locator("#result")
    deadline = time.monotonic() + 30
    while not result.is_visible():
        assert time.monotonic() < deadline, "no result after the 3-D Secure challenge"
        assert not page.locator("#error").is_visible(), page.locator("#error").inner_text()
        button = page.get_by_role("button", name="Complete authentication")
        if button.count():
            button.click()
            dialogs += 1
        else:
            page.wait_for_timeout(100)
    assert dialogs >= 1
    assert page.locator("#balance").inner_text() == "10.00 USD"
    assert "10.00 USD was added" in page.locator("#result-text").inner_text()
    assert stack.wallet(email)["balance"] == "10.000000"


def test_a_declined_card_shows_a_clear_message_and_grants_nothing(browsers: Any, stack: Stack) -> None:
    email = stack.new_customer("declined")
    page = browsers.new_page()
    sign_in(page, email)

    start_purchase(page, DECLINED)

    error = page.locator("#error")
    error.wait_for()
    assert error.inner_text() == "Your card was declined. Try another card or contact your bank."
    assert not page.locator("#result").is_visible()
    assert page.locator("#balance").inner_text() == "0.00 USD"
    assert page.get_by_role("button", name="Pay").is_enabled()  # another card can be tried
    wallet = stack.wallet(email)
    assert wallet["balance"] == "0.000000" and wallet["lots"] == []
    page.goto("/dashboard")
    assert page.locator("#balance").inner_text() == "0.00 USD"
    assert page.locator("#no-lots").is_visible()
    assert urlsplit(page.url).path == "/dashboard"
