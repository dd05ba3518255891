"""Sign-up and password rules (CHECKLIST G49, G50, J61-J64): POST /api/v1/auth/register and friends."""

from __future__ import annotations

import sqlalchemy as sa
from argon2 import PasswordHasher, extract_parameters

from credits.accounts.models import EmailToken, User
from tests.conftest import row_counts, table_snapshot
from tests.integration.accounts_helpers import PASSWORD, login, outbox, register, verify_latest
from tests.integration.switch_fixtures import plan_fixture, switch_fixture, switch_key_fixture  # noqa: F401


def _user_row(database, email="ada@example.com"):
    from credits.accounts.service import email_index

    with database.engine.connect() as conn:
        return conn.execute(sa.select(User.__table__).where(User.email_bidx == email_index(email))).first()


def test_register_creates_user_encrypted_and_queues_verification(client, database):
    r = register(client)
    assert r.status_code == 201 and "message" in r.json
    row = _user_row(database)
    assert row is not None and row.email_verified_at is None
    for column in ("email_enc", "name_enc", "dob_enc"):
        assert "ada" not in getattr(row, column).lower() and "1990" not in getattr(row, column)
        assert getattr(row, column).startswith("v1.")
    [(template, to, context)] = outbox()
    assert (template, to) == ("verify_email", "ada@example.com")
    assert context["link"].endswith(context["token"]) and len(context["token"]) >= 43
    with database.engine.connect() as conn:
        stored = conn.execute(sa.select(EmailToken.token_hash)).scalars().all()
    assert context["token"] not in stored  # only the hash


def test_email_verification_link_is_single_use(client, database):
    register(client)
    r = verify_latest(client)
    assert r.status_code == 200 and r.json["purpose"] == "verify_email"
    assert _user_row(database).email_verified_at is not None
    again = verify_latest(client)
    assert again.status_code == 400 and again.json["code"] == "invalid_token"
    assert client.post("/api/v1/auth/verify-email", json={"token": "x" * 43}).status_code == 400


def test_email_verification_link_expires(client, clock):
    register(client)
    clock.advance(hours=49)
    assert verify_latest(client).status_code == 400


def test_registering_a_taken_address_looks_the_same_and_tells_its_owner(client, database):
    first = register(client)
    before = row_counts(database)
    second = register(client, password="another fine passphrase")
    assert second.status_code == first.status_code == 201 and second.json == first.json
    after = row_counts(database)
    assert after["users"] == before["users"] and after["wallets"] == before["wallets"]
    assert [m[0] for m in outbox()] == ["verify_email", "account_exists"]


def test_register_bad_input_is_400_and_changes_nothing(client, database):
    before = table_snapshot(database)
    bad = [
        {"email": "not-an-email"},
        {"date_of_birth": "1990-02-30"},
        {"date_of_birth": "21/04/1990"},
        {"date_of_birth": "2999-01-01"},
        {"country": "XX"},
        {"name": ""},
        {"nickname": "unknown field"},
    ]
    for fields in bad:
        r = register(client, **fields)
        assert r.status_code == 400, (fields, r.json)
        assert r.mimetype == "application/problem+json"
    assert client.post("/api/v1/auth/register", json={"email": "a@example.com"}).status_code == 400
    assert client.post("/api/v1/auth/register", data="{", content_type="application/json").status_code == 400
    assert table_snapshot(database) == before


# ---------------------------------------------------------------- G49, G50: children under 13


def test_G49_date_of_birth_is_a_free_full_date_entry(client):
    spec = client.get("/api/v1/openapi.json").json
    schema = spec["components"]["schemas"]["RegisterIn"]
    assert schema["properties"]["date_of_birth"]["type"] == "string"
    assert "YYYY-MM-DD" in schema["properties"]["date_of_birth"]["description"]
    # No checkbox or claim about age, no pre-filtered years, no wording about refusing children.
    assert set(schema["properties"]) == {"email", "password", "name", "date_of_birth", "country"}
    text = (str(schema) + str(spec["paths"]["/api/v1/auth/register"])).lower()
    assert "13" not in text and "12" not in text and "child" not in text and "age" not in text.replace("message", "")
    # Any real date of birth is accepted as entry (the age rule applies after, silently).
    assert register(client, date_of_birth="1931-12-31").status_code == 201


def test_G50_under_13_refused_generically_nothing_stored_retry_blocked(client, database, clock):
    before = table_snapshot(database)
    today = clock.now().date()
    twelve = today.replace(year=today.year - 13, day=min(today.day + 1, 28))  # 13th birthday still ahead
    r = register(client, email="kid@example.com", date_of_birth=twelve.isoformat())
    assert r.status_code == 403 and r.json["code"] == "registration_refused"
    assert "13" not in r.json["detail"] and "age" not in r.json["detail"].lower()
    assert table_snapshot(database) == before  # no user, no token, no email, no event: nothing
    block = client.get_cookie("__Host-signup-block")
    assert block is not None and block.secure and block.http_only
    assert "kid" not in block.value and twelve.isoformat() not in block.value and "example" not in block.value
    # An immediate retry with an adult date of birth meets the same generic refusal.
    r = register(client, email="kid@example.com", date_of_birth="1990-01-01")
    assert r.status_code == 403 and r.json["code"] == "registration_refused"
    assert table_snapshot(database) == before
    # A forged block cookie is ignored; another browser (no cookie) can sign up an adult.
    client.set_cookie("__Host-signup-block", "forged")
    assert register(client, email="adult@example.com").status_code == 201


def test_G50_thirteenth_birthday_today_is_accepted(client, clock):
    today = clock.now().date()
    born = today.replace(year=today.year - 13)
    assert register(client, email="teen@example.com", date_of_birth=born.isoformat()).status_code == 201


def test_G51_staff_closes_a_reported_child_account_and_erases_its_personal_data(app, client, make, database,
                                                                               switch, plan):
    import sqlalchemy as sa

    from credits.audit import AuditEntry
    from credits.calls.models import Call, CallerNumber
    from credits.ledger import service as ledger
    from tests.integration.accounts_helpers import signed_in, staff_client

    csrf = signed_in(client, "child@example.com")
    client.patch("/api/v1/me", json={"phone": "+6591112222", "current_password": PASSWORD}, headers=csrf)
    child = client.get("/api/v1/me").json
    ledger.grant(ledger.wallet_of_user(child["id"]).id, 1_000_000, "purchase")
    switch.authorize("child-call", "+6591112222", "+6561234567")
    switch.complete("child-call", 30)
    support, support_csrf = staff_client(app, make, "support")
    assert support.post(f"/api/v1/staff/accounts/{child['id']}/underage", headers=support_csrf).status_code == 403
    officer, officer_csrf = staff_client(app, make, "security_officer")
    r = officer.post(f"/api/v1/staff/accounts/{child['id']}/underage", headers=officer_csrf)
    assert r.status_code == 204
    assert client.get("/api/v1/me").status_code == 401  # signed out everywhere
    assert login(client, "child@example.com").status_code == 401
    with database.engine.connect() as conn:
        user = conn.execute(sa.select(User.__table__).where(User.id == child["id"])).one()
        assert user.status == "closed" and user.name_enc is None and user.dob_enc is None and user.country is None
        assert user.password_hash is None and user.mfa_secret_enc is None
        assert conn.execute(sa.select(CallerNumber.__table__)).all() == []
        call = conn.execute(sa.select(Call.caller, Call.callee)).one()
        assert tuple(call) == ("erased", "erased")
        for t in ("sessions", "email_tokens", "recovery_codes"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {t} WHERE user_id = :u"), {"u": child["id"]}).scalar() \
                == 0
        assert conn.execute(sa.text("SELECT count(*) FROM outbox WHERE user_id = :u"), {"u": child["id"]}).scalar() \
            == 0
        entry = conn.execute(sa.select(AuditEntry.action, AuditEntry.subject, AuditEntry.detail)
                             .where(AuditEntry.action == "accounts.close_underage")).one()
        assert entry.subject == f"user:{child['id']}" and "child" not in entry.detail
    # No decryptable personal value is left on the user row: the address is a pseudonym.
    from credits.accounts import service

    assert service.get_profile(child["id"]).email.startswith("erased-")
    assert officer.post("/api/v1/staff/accounts/999999/underage", headers=officer_csrf).status_code == 404


# ---------------------------------------------------------------- J61-J64: passwords


def test_J61_password_length_any_characters_no_composition_exact_as_typed(client):
    assert register(client, "short@example.com", password="Zq8#pL2").status_code == 400  # 7 characters
    assert register(client, "eight@example.com", password="Zq8#pL2x").status_code == 201
    long64 = "quiet river " * 5 + "stone"
    assert len(long64) >= 64 and register(client, "l64@example.com", password=long64).status_code == 201
    long128 = ("amber falcon tidewater " * 6)[:127] + "!"
    assert len(long128) == 128 and register(client, "l128@example.com", password=long128).status_code == 201
    unicode_pw = "  żółw pije 茶 kawę ☕  "
    assert register(client, "uni@example.com", password=unicode_pw).status_code == 201
    lower = "no capitals no digits no symbols here"
    assert register(client, "plain@example.com", password=lower).status_code == 201
    # Verified exactly as typed: no trimming, no case folding.
    assert login(client, "uni@example.com", unicode_pw).status_code == 200
    assert login(client, "uni@example.com", unicode_pw.strip()).status_code == 401
    assert login(client, "plain@example.com", lower.upper()).status_code == 401
    assert login(client, "l128@example.com", long128).status_code == 200


def test_J62_common_breached_brand_and_personal_passwords_refused_with_a_message(client, database):
    before = row_counts(database)
    for pw in ("password1", "qwertyuiop", "iloveyou123", "baseball1", "sunshine"):
        r = register(client, password=pw)
        assert r.status_code == 400 and r.json["field"] == "password"
        assert "common or breached" in r.json["detail"]
    r = register(client, password="my Credits wallet 77")
    assert r.status_code == 400 and "name" in r.json["detail"]
    r = register(client, email="zanzibar.quill@example.com", password="zanzibar.quill rocks 9")
    assert r.status_code == 400 and "email" in r.json["detail"]
    r = register(client, name="Bartholomew Quince", password="quince bartholomew 1")
    assert r.status_code == 400 and "name" in r.json["detail"]
    r = register(client, password="aaaaaaaaaaaa")
    assert r.status_code == 400 and "guess" in r.json["detail"]
    assert row_counts(database) == before
    # 100 characters: zxcvbn (which refuses more than 72) scores the first 72, nothing raises.
    assert register(client, password=("x7 mellow pelican " * 7)[:100]).status_code == 201


def test_J62_phone_number_in_password_refused(client, make):
    from credits.accounts import passwords
    from credits.errors import ValidationError

    try:
        passwords.check_policy("call me on 6591234567 ok", user_inputs=["a@example.com", "+6591234567"])
    except ValidationError as exc:
        assert "phone" in exc.message
    else:
        raise AssertionError("phone number accepted in password")


def test_J63_argon2id_hash_with_parameters_at_least_asvs(client, database, app):
    register(client)
    stored = _user_row(database).password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    # Production parameters (the test config deliberately uses cheap ones).
    from credits import config
    from credits.accounts import passwords

    previous = config.current()
    config.install(config.Config(env="development", database_url=previous.database_url))
    try:
        production_hash = passwords.hash_password("whatever it is 123")
    finally:
        config.install(previous)
    params = extract_parameters(production_hash)
    assert production_hash.startswith("$argon2id$")
    # OWASP / ASVS appendix: argon2id with at least 19 MiB, 2 iterations, 1 degree of parallelism.
    assert params.memory_cost >= 19 * 1024 and params.time_cost >= 2 and params.parallelism >= 1


def test_J64_login_rehashes_a_hash_made_with_weaker_parameters(client, database):
    register(client)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with database.engine.begin() as conn:
        conn.execute(sa.update(User.__table__).values(password_hash=weak))
    assert login(client).status_code == 200
    new = _user_row(database).password_hash
    assert new != weak and new.startswith("$argon2id$")
    from credits.accounts.passwords import hasher

    params = extract_parameters(new)
    assert (params.memory_cost, params.time_cost) == (hasher().memory_cost, hasher().time_cost)
    client.delete_cookie("__Host-session")
    assert login(client).status_code == 200
