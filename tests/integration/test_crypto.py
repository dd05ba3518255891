"""Cryptographic storage (CHECKLIST N94-N99): ciphertext at rest, key ids, bound cells, rotation, blind indexes,
keys from the environment."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
import sqlalchemy as sa

from credits import config, crypto
from credits.accounts import service as accounts
from credits.calls import service as calls
from credits.errors import ConfigError
from credits.notify import outbox
from tests.conftest import make_config

K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()
BLIND = base64.b64encode(b"b" * 32).decode()
EMAIL = "carol.secret@example.com"
PHONE = "+6561234567"
NAME = "Carol Quixotic"
DOB = "1984-02-29"


def _install(backend: Any, **overrides: Any) -> config.Config:
    return config.install(make_config(backend.url, **overrides))


def _set_personal(database: Any, user_id: int) -> None:
    """Name, date of birth and MFA secret as the account service stores them (encrypted for their cell)."""
    values = {c: crypto.encrypt(v, "users", c, user_id)
              for c, v in (("name_enc", NAME), ("dob_enc", DOB), ("mfa_secret_enc", "JBSWY3DPEHPK3PXP"))}
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET name_enc = :name_enc, dob_enc = :dob_enc, "
                             "mfa_secret_enc = :mfa_secret_enc WHERE id = :id"), {**values, "id": user_id})


def _populate(database: Any) -> accounts.AccountView:
    account = accounts.create_account(EMAIL, "correct horse battery", phone=PHONE)
    _set_personal(database, account.user_id)
    from credits.db import unit_of_work

    with unit_of_work() as uow:
        outbox.enqueue(uow.session, template="verify_email", to=EMAIL, context={"name": NAME},
                       user_id=account.user_id)
        uow.commit()
    return account


def _raw_rows(database: Any, table: str) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]  # noqa: S608


def _every_cell(database: Any) -> list[tuple[str, str, Any, str]]:
    """(table, column, row id, stored value) of every non-null encrypted cell, read without the ORM."""
    from credits import models  # noqa: F401 - registers the encrypted columns

    cells = []
    with database.engine.connect() as conn:
        for col in crypto.ENCRYPTED_COLUMNS:
            rows = conn.execute(sa.text(
                f"SELECT {col.pk}, {col.column} FROM {col.table} WHERE {col.column} IS NOT NULL"  # noqa: S608
            )).all()
            cells += [(col.table, col.column, row_id, value) for row_id, value in rows]
    return cells


# ---------------------------------------------------------------- N94


def test_N94_personal_columns_are_ciphertext_in_the_raw_database(database):
    _populate(database)
    secrets_in_clear = [EMAIL, "carol.secret", PHONE, PHONE.lstrip("+"), "61234567", NAME, "Quixotic", DOB,
                        "JBSWY3DPEHPK3PXP"]
    for table in ("users", "caller_numbers", "outbox"):
        rows = _raw_rows(database, table)
        assert rows, table
        for row in rows:
            flat = " ".join(str(v) for v in row.values())
            leaked = [s for s in secrets_in_clear if s.lower() in flat.lower()]
            assert leaked == [], f"{table} row {row['id']} holds {leaked} in clear"
    user = _raw_rows(database, "users")[0]
    for column in ("email_enc", "name_enc", "dob_enc", "mfa_secret_enc"):
        assert user[column].startswith("v1."), column
    assert _raw_rows(database, "caller_numbers")[0]["number_enc"].startswith("v1.")


def test_N94_every_registered_encrypted_column_holds_only_ciphertext(database):
    _populate(database)
    cells = _every_cell(database)
    assert {(t, c) for t, c, _, _ in cells} >= {("users", "email_enc"), ("users", "name_enc"),
                                                ("caller_numbers", "number_enc"), ("outbox", "recipient_enc")}
    for table, column, row_id, value in cells:
        assert value.startswith(f"{crypto.VERSION}."), (table, column, row_id)
        assert crypto.decrypt(value, table, column, row_id) is not None


# ---------------------------------------------------------------- N95


def test_N95_ciphertext_names_its_key_and_encryption_uses_the_primary(backend, database):
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=BLIND)
    first = crypto.encrypt(EMAIL, "users", "email_enc", 7)
    assert crypto.key_id_of(first) == "k1"
    _install(backend, encryption_keys=f"k2:{K2},k1:{K1}", blind_index_key=BLIND)
    second = crypto.encrypt(EMAIL, "users", "email_enc", 7)
    assert crypto.key_id_of(second) == "k2"
    # Every configured key decrypts what it encrypted.
    assert crypto.decrypt(first, "users", "email_enc", 7) == EMAIL
    assert crypto.decrypt(second, "users", "email_enc", 7) == EMAIL
    # A value under a key that is no longer configured does not decrypt.
    _install(backend, encryption_keys=f"k2:{K2}", blind_index_key=BLIND)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(first, "users", "email_enc", 7)


def test_N95_ciphertexts_of_one_value_differ(backend, database):
    a = crypto.encrypt(EMAIL, "users", "email_enc", 1)
    b = crypto.encrypt(EMAIL, "users", "email_enc", 1)
    assert a != b  # a fresh nonce per value: equal plaintexts cannot be spotted in the table


# ---------------------------------------------------------------- N96


def test_N96_value_copied_to_another_row_fails_to_decrypt(database):
    alice = accounts.create_account("alice@example.com", "correct horse battery")
    bob = accounts.create_account("bob@example.com", "correct horse battery")
    alice_email = _raw_rows(database, "users")[0]["email_enc"]
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET email_enc = :v WHERE id = :id"), {"v": alice_email, "id": bob.user_id})
    stored = {r["id"]: r["email_enc"] for r in _raw_rows(database, "users")}
    assert crypto.decrypt(stored[alice.user_id], "users", "email_enc", alice.user_id) == "alice@example.com"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(stored[bob.user_id], "users", "email_enc", bob.user_id)


def test_N96_value_copied_to_another_column_fails_to_decrypt(database):
    account = accounts.create_account("alice@example.com", "correct horse battery", phone=PHONE)
    email = _raw_rows(database, "users")[0]["email_enc"]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(email, "users", "name_enc", account.user_id)
    number = _raw_rows(database, "caller_numbers")[0]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(number["number_enc"], "users", "email_enc", number["id"])
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE caller_numbers SET number_enc = :v"), {"v": email})
    with pytest.raises(crypto.DecryptionError):
        calls.caller_numbers(account.wallet.id)


def test_N96_tampered_ciphertext_fails_to_decrypt(database):
    value = crypto.encrypt(EMAIL, "users", "email_enc", 1)
    prefix, blob = value.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(blob))
    raw[-1] ^= 1
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(f"{prefix}.{base64.urlsafe_b64encode(bytes(raw)).decode()}", "users", "email_enc", 1)


# ---------------------------------------------------------------- N97


def _accounts(n: int) -> list[accounts.AccountView]:
    return [accounts.create_account(f"user{i}@example.com", "correct horse battery", phone=f"+65612345{i:02d}")
            for i in range(n)]


def test_N97_keys_rotate_reencrypts_everything_then_the_old_key_can_go(backend, database, runner):
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=BLIND)
    made = _accounts(5)
    _set_personal(database, made[0].user_id)
    before = {(t, c, i): crypto.decrypt(v, t, c, i) for t, c, i, v in _every_cell(database)}
    assert {crypto.key_id_of(v) for *_, v in _every_cell(database)} == {"k1"}

    _install(backend, encryption_keys=f"k2:{K2},k1:{K1}", blind_index_key=BLIND)
    result = runner.invoke(args=["keys", "rotate", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "primary key: k2" in result.output
    assert "users.email_enc: 2 re-encrypted, 3 to go" in result.output  # progress, batch by batch
    assert f"rotated {len(before)} values" in result.output
    assert {crypto.key_id_of(v) for *_, v in _every_cell(database)} == {"k2"}

    _install(backend, encryption_keys=f"k2:{K2}", blind_index_key=BLIND)  # the retired key removed
    after = {(t, c, i): crypto.decrypt(v, t, c, i) for t, c, i, v in _every_cell(database)}
    assert after == before
    check = runner.invoke(args=["keys", "check"])
    assert check.exit_code == 0, check.output
    assert f"key k2 (primary): {len(before)} values" in check.output
    # Lookups still work: blind indexes do not depend on the encryption keys.
    assert calls.caller_numbers(made[3].wallet.id) == ["+6561234503"]


def test_N97_rotation_is_idempotent(backend, database, runner):
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=BLIND)
    _accounts(3)
    _install(backend, encryption_keys=f"k2:{K2},k1:{K1}", blind_index_key=BLIND)
    assert runner.invoke(args=["keys", "rotate"]).exit_code == 0
    snapshot = _every_cell(database)
    again = runner.invoke(args=["keys", "rotate"])
    assert again.exit_code == 0, again.output
    assert "rotated 0 values in 0 columns" in again.output
    assert _every_cell(database) == snapshot  # nothing rewritten


def test_N97_rotation_resumes_after_an_interruption(backend, database):
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=BLIND)
    _accounts(5)
    _install(backend, encryption_keys=f"k2:{K2},k1:{K1}", blind_index_key=BLIND)

    class Crash(Exception):
        pass

    def crash_after_first_batch(progress: crypto.RotationProgress) -> None:
        raise Crash

    with pytest.raises(Crash):
        crypto.rotate(batch=2, on_progress=crash_after_first_batch)
    keys = [crypto.key_id_of(v) for t, c, _, v in _every_cell(database) if (t, c) == ("users", "email_enc")]
    assert sorted(keys) == ["k1", "k1", "k1", "k2", "k2"]  # the first batch committed, the rest untouched
    counts = crypto.rotate(batch=2)
    assert counts["users.email_enc"] == 3
    assert {crypto.key_id_of(v) for *_, v in _every_cell(database)} == {"k2"}


def test_N97_keys_check_fails_when_a_value_is_under_a_removed_key(backend, database, runner):
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=BLIND)
    _accounts(1)
    _install(backend, encryption_keys=f"k2:{K2}", blind_index_key=BLIND)  # removed before rotating: wrong
    result = runner.invoke(args=["keys", "check"])
    assert result.exit_code == 1
    assert "do not decrypt: users.email_enc." in result.output


def test_N97_key_ids_with_like_wildcards_rotate_correctly(backend, database):
    _install(backend, encryption_keys=f"kx1:{K1}", blind_index_key=BLIND)
    _accounts(1)
    # "k_1" as a LIKE pattern would match "kx1": the rotation must still see kx1 values as not rotated.
    _install(backend, encryption_keys=f"k_1:{K2},kx1:{K1}", blind_index_key=BLIND)
    crypto.rotate()
    assert {crypto.key_id_of(v) for *_, v in _every_cell(database)} == {"k_1"}


# ---------------------------------------------------------------- N98


def test_N98_blind_index_uses_its_own_key_and_holds_no_plaintext(backend, database):
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=BLIND)
    account = accounts.create_account(EMAIL, "correct horse battery", phone=PHONE)
    user = _raw_rows(database, "users")[0]
    number = _raw_rows(database, "caller_numbers")[0]
    for index in (user["email_bidx"], number["number_bidx"]):
        assert len(index) == 64 and all(ch in "0123456789abcdef" for ch in index)
    assert "carol" not in user["email_bidx"] and "6561234567" not in number["number_bidx"]
    # HMAC under the blind-index key, not under the encryption key.
    expected = hmac.new(base64.b64decode(BLIND), f"email:{EMAIL}".encode(), hashlib.sha256).hexdigest()
    assert user["email_bidx"] == expected
    under_encryption_key = hmac.new(base64.b64decode(K1), f"email:{EMAIL}".encode(), hashlib.sha256).hexdigest()
    assert user["email_bidx"] != under_encryption_key
    # Rotating the encryption keys leaves lookups alone; another environment's blind key gives other indexes.
    _install(backend, encryption_keys=f"k2:{K2}", blind_index_key=BLIND)
    assert accounts.email_index(EMAIL) == user["email_bidx"]
    other = base64.b64encode(b"o" * 32).decode()
    _install(backend, encryption_keys=f"k1:{K1}", blind_index_key=other)
    assert accounts.email_index(EMAIL) != user["email_bidx"]
    assert account.user_id == user["id"]


def test_N98_blind_index_key_differs_from_every_encryption_key_by_default(backend, database):
    ring = crypto.keyring()
    assert ring.blind_key not in ring.keys.values()


# ---------------------------------------------------------------- N99

PROD = {"env": "production", "database_url": "postgresql://app@db/credits", "secret_key": "s" * 40,
        "public_url": "https://credits.example"}


def test_N99_production_refuses_to_start_without_keys():
    with pytest.raises(ConfigError) as missing:
        config.Config.from_env({}, **PROD)
    assert "CREDITS_ENCRYPTION_KEYS must be set" in missing.value.message
    assert "CREDITS_BLIND_INDEX_KEY must be set" in missing.value.message


def test_N99_create_app_refuses_production_without_keys(monkeypatch):
    from credits import create_app

    for name in ("CREDITS_ENCRYPTION_KEYS", "CREDITS_BLIND_INDEX_KEY"):
        monkeypatch.delenv(name, raising=False)

    previous = config.current()
    try:
        with pytest.raises(ConfigError):
            create_app(**PROD)
    finally:
        config.install(previous)


def test_N99_production_refuses_default_and_malformed_keys():
    with pytest.raises(ConfigError) as bad:
        config.Config.from_env({}, **{**PROD, "secret_key": config.DEV_SECRET, "encryption_keys": f"k1:{K1}",
                                      "blind_index_key": "dG9vIHNob3J0"})
    assert "CREDITS_SECRET_KEY" in bad.value.message
    assert "CREDITS_BLIND_INDEX_KEY must be base64 of 32 bytes" in bad.value.message
    short = config.Config(**{**PROD, "encryption_keys": "k1:dG9vIHNob3J0", "blind_index_key": BLIND})
    with pytest.raises(ConfigError, match="must be 32 bytes"):
        crypto.Keyring.from_config(short)


def test_N99_production_keys_come_from_the_environment():
    cfg = config.Config.from_env({"CREDITS_ENV": "production", "CREDITS_DATABASE_URL": "postgresql://app@db/credits",
                                  "CREDITS_SECRET_KEY": "s" * 40, "CREDITS_ENCRYPTION_KEYS": f"k2:{K2},k1:{K1}",
                                  "CREDITS_BLIND_INDEX_KEY": BLIND, "CREDITS_PUBLIC_URL": "https://credits.example"})
    ring = crypto.Keyring.from_config(cfg)
    assert ring.primary == "k2" and set(ring.keys) == {"k1", "k2"}
    dev = crypto.Keyring.from_config(config.Config(env="development"))
    assert dev.keys[dev.primary] not in ring.keys.values()
