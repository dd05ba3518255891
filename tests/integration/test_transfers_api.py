"""POST /api/v1/me/transfers: re-authenticated credit transfers with notices to both parties."""

from __future__ import annotations

from credits.accounts import service as accounts
from credits.ledger import service as ledger
from tests.conftest import row_counts, table_snapshot
from tests.integration.accounts_helpers import PASSWORD, enrol_totp, outbox, signed_in, totp_now

USD = 1_000_000


def _setup(client, make):
    csrf = signed_in(client)  # ada@example.com
    sender = ledger.get_wallet("ada@example.com")
    ledger.grant(sender.id, 20 * USD, "purchase")
    bob = make.account("bob@example.com")
    return csrf, sender, bob


def test_transfer_by_email_and_by_account_number_notifies_both(client, make):
    csrf, sender, bob = _setup(client, make)
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "5.00", "password": PASSWORD},
                    headers=csrf)
    assert r.status_code == 201, r.json
    assert r.json["amount"] == "5.000000" and r.json["balance"] == "15.000000"
    assert r.json["to_account"] == bob.wallet.account_number
    r = client.post("/api/v1/me/transfers", json={"to": bob.wallet.account_number, "amount": "2.50",
                                                  "password": PASSWORD}, headers=csrf)
    assert r.status_code == 201, r.json
    assert ledger.balance(bob.wallet.id).balance == 7_500_000
    assert ledger.balance(sender.id).balance == 12_500_000
    sent, received = outbox("transfer_sent"), outbox("transfer_received")
    assert [m[1] for m in sent] == ["ada@example.com"] * 2
    assert [m[1] for m in received] == ["bob@example.com"] * 2
    assert sent[0][2]["amount"] == "5.000000" and received[0][2]["from_account"] == sender.account_number
    assert "wasnt_me_url" in sent[0][2]


def test_wrong_password_or_none_is_refused_and_moves_nothing(client, make, database):
    csrf, _sender, _bob = _setup(client, make)
    before = table_snapshot(database)
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "5.00", "password": "nope nope"},
                    headers=csrf)
    assert r.status_code == 403 and r.json["code"] == "reauthentication_failed"
    after = table_snapshot(database)
    assert {k: v for k, v in after.items() if k != "security_events"} == \
           {k: v for k, v in before.items() if k != "security_events"}
    counts = row_counts(database)
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "5.00"}, headers=csrf)
    assert r.status_code == 400
    assert row_counts(database) == counts


def test_bad_input_is_400_and_changes_nothing(client, make, database):
    csrf, _sender, _bob = _setup(client, make)
    counts = row_counts(database)
    for body in ({"to": "bob@example.com", "amount": "0", "password": PASSWORD},
                 {"to": "bob@example.com", "amount": "-1.00", "password": PASSWORD},
                 {"to": "bob@example.com", "amount": "1.001", "password": PASSWORD},
                 {"to": "bob@example.com", "amount": 5, "password": PASSWORD},
                 {"to": "bob@example.com", "amount": "5.00", "password": PASSWORD, "extra": 1},
                 {"to": "ada@example.com", "amount": "5.00", "password": PASSWORD}):
        r = client.post("/api/v1/me/transfers", json=body, headers=csrf)
        assert r.status_code == 400, (body, r.json)
        assert r.mimetype == "application/problem+json"
    r = client.post("/api/v1/me/transfers", json={"to": "nobody@example.com", "amount": "5.00", "password": PASSWORD},
                    headers=csrf)
    assert r.status_code == 404
    assert row_counts(database) == counts


def test_needs_csrf_and_a_session(client, make, database):
    csrf, _sender, _bob = _setup(client, make)
    counts = row_counts(database)
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "5.00", "password": PASSWORD})
    assert r.status_code == 400 and r.json["code"] == "csrf_failed"
    assert row_counts(database) == counts


def test_idempotency_key_replay_moves_nothing(client, make):
    csrf, sender, bob = _setup(client, make)
    headers = {**csrf, "Idempotency-Key": "k-1"}
    body = {"to": "bob@example.com", "amount": "3.00", "password": PASSWORD}
    first = client.post("/api/v1/me/transfers", json=body, headers=headers)
    second = client.post("/api/v1/me/transfers", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json["id"] == second.json["id"]
    assert ledger.balance(bob.wallet.id).balance == 3 * USD
    assert len(outbox("transfer_sent")) == 1


def test_with_mfa_the_code_confirms_the_transfer(client, make):
    csrf, _sender, bob = _setup(client, make)
    secret, _codes, csrf = enrol_totp(client, csrf)
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "1.00", "password": PASSWORD},
                    headers=csrf)
    assert r.status_code == 403  # with MFA on, the password alone does not confirm a transfer
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "1.00",
                                                  "totp": totp_now(secret, 1)}, headers=csrf)
    assert r.status_code == 201, r.json
    assert ledger.balance(bob.wallet.id).balance == USD


def test_frozen_sender_is_refused(client, make, database):
    csrf, _sender, _bob = _setup(client, make)
    user = ledger.get_wallet("ada@example.com").user_id
    accounts.set_status(user, "frozen")
    counts = row_counts(database)
    r = client.post("/api/v1/me/transfers", json={"to": "bob@example.com", "amount": "1.00", "password": PASSWORD},
                    headers=csrf)
    assert r.status_code in (401, 403)
    assert row_counts(database) == counts
