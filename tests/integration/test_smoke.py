"""Smoke: the app starts on each backend, migrations applied, a grant shows in the balance."""

from credits.ledger import service as ledger


def test_grant_shows_in_balance(make, backend):
    account = make.account(credit=5_000_000)
    view = ledger.balance(account.wallet.id)
    assert (view.balance, view.available, view.currency) == (5_000_000, 5_000_000, "USD")


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json()["database"] == "ok"
