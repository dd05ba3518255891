"""Fixtures and helpers of the payments tests: gateways (fake and localstripe), buyers, cards, staff, tokens.

Import the fixtures into a test module with `from tests.integration.payments_fixtures import *`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import sqlalchemy as sa
import stripe

from credits.accounts import sessions
from credits.db import unit_of_work
from credits.ledger.audit import run_audit
from credits.payments import cards, provider
from credits.payments.fake_gateway import FakeGateway
from credits.payments.localstripe_server import TEST_SECRET_KEY, LocalStripe
from credits.payments.stripe_gateway import StripeGateway

WEBHOOK_SECRET = "whsec_payments_tests"  # noqa: S105 - a test secret
VISA = "4242424242424242"
DECLINED = "4000000000000341"
THREE_D_SECURE = "4000002500003155"

__all__ = [
    "DECLINED", "THREE_D_SECURE", "VISA", "WEBHOOK_SECRET", "Buyer", "audit_clean", "bearer", "buyer", "fake",
    "fake_card", "localstripe", "ls_card", "ls_gateway", "new_buyer", "outbox_templates", "staff",
]


@pytest.fixture
def fake(app: Any) -> Iterator[FakeGateway]:
    """A FakeGateway the services use for this test."""
    gw = FakeGateway(webhook_secret=WEBHOOK_SECRET)
    previous = provider.install(gw)
    yield gw
    provider.install(previous)


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    with LocalStripe(start_timeout_s=20) as server:
        yield server


@pytest.fixture
def ls_gateway(app: Any, localstripe: LocalStripe, clock: Any) -> Iterator[StripeGateway]:
    """StripeGateway on a clean localstripe; the test clock follows the wall clock localstripe stamps with."""
    from datetime import UTC, datetime

    clock.set(datetime.now(UTC))
    localstripe.reset()
    gw = StripeGateway(TEST_SECRET_KEY, api_base=localstripe.base_url, webhook_secret=WEBHOOK_SECRET)
    previous = provider.install(gw)
    yield gw
    provider.install(previous)


@dataclass
class Buyer:
    user_id: int
    wallet_id: int
    email: str
    account_number: str


def new_buyer(make: Any, **kw: Any) -> Buyer:
    account = make.account(**kw)
    return Buyer(account.user_id, account.wallet.id, account.email, account.wallet.account_number)


@pytest.fixture
def buyer(make: Any) -> Buyer:
    return new_buyer(make)


def fake_card(gw: FakeGateway, user_id: int, number: str = VISA, *, authenticate: bool = True) -> str:
    """What the page does for a new card: a SetupIntent here, confirmCardSetup in the browser (3-D Secure
    passed when the card asks); returns the payment method id."""
    setup = cards.start_setup(user_id)
    pm = gw.create_card_payment_method(number, 12, 2030)
    si = gw.confirm_setup_intent(setup.setup_intent_id, pm)
    if si.status == "requires_action" and authenticate:
        gw.authenticate_setup_intent(si.id)
    return pm


def ls_card(server: LocalStripe, user_id: int, number: str = VISA) -> str:
    """The same against localstripe: a payment method from a raw test card, confirmed on our SetupIntent as
    stripe.confirmCardSetup does (a second confirm completes its 3-D Secure dialog)."""
    raw = stripe.StripeClient(TEST_SECRET_KEY, base_addresses={"api": server.base_url}, max_network_retries=0)
    setup = cards.start_setup(user_id)
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    pm = raw.v1.payment_methods.create(cast(Any, {"type": "card", "card": card})).id
    si = raw.v1.setup_intents.confirm(setup.setup_intent_id, {"payment_method": pm})
    if si.status == "requires_action":
        raw.v1.setup_intents.confirm(setup.setup_intent_id)
    return pm


def bearer(user_id: int, *, mfa_ok: bool = True) -> dict[str, str]:
    """Authorization header with a personal API token of the user (no CSRF needed)."""
    with unit_of_work() as uow:
        new = sessions.create(uow.session, user_id, kind="api", mfa_ok=mfa_ok)
        uow.commit()
    return {"Authorization": f"Bearer {new.token}"}


def staff(make: Any, role: str = "support") -> tuple[int, dict[str, str]]:
    """A staff member of `role` with an MFA-verified token: (user id, headers)."""
    account = make.account(role=role)
    return account.user_id, bearer(account.user_id, mfa_ok=True)


def audit_clean() -> None:
    report = run_audit()
    assert report.ok, report.text()


def outbox_templates(database: Any) -> list[str]:
    with database.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT template FROM outbox ORDER BY id")).scalars())
