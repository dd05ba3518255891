"""Customer JSON API (DESIGN §5b): sign-up, sign-in (cookie or personal token), MFA, password reset, the profile,
wallet, statement, call records and sessions; one staff route to sign a customer out everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Response, after_this_request, g, request, stream_with_context
from itsdangerous import BadSignature, URLSafeTimedSerializer
from marshmallow import RAISE

from credits import config, money
from credits.accounts import mfa, schemas, service, sessions, signin, transfers
from credits.web.api import SESSION_SECURITY as SECURITY
from credits.web.api import Blueprint
from credits.web.auth import (
    clear_session_cookie,
    current_user_id,
    login_required,
    session_cookie,
    set_session_cookie,
    staff_required,
)
from credits.web.limits import account_key, account_throttle, client_ip, ip_limit

auth_blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth",
                     description="Sign-up, sign-in, second factor, password reset")
me_blp = Blueprint("me", __name__, url_prefix="/api/v1/me",
                   description="The signed-in customer's profile, wallet, statement, calls, sessions and security")
staff_sessions_blp = Blueprint("staff_sessions", __name__, url_prefix="/api/v1/staff",
                               description="Staff: account security")

#: Non-identifying retry block after a refused sign-up (G50): a signed timestamp, nothing about the person.
SIGNUP_BLOCK_COOKIE = "__Host-signup-block"
SIGNUP_BLOCK_SECONDS = 24 * 3600


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _agent() -> str | None:
    return request.user_agent.string or None


def _block_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(config.current().secret_key, salt="signup-block")


def _signup_blocked() -> bool:
    value = request.cookies.get(SIGNUP_BLOCK_COOKIE)
    if not value:
        return False
    try:
        _block_signer().loads(value, max_age=SIGNUP_BLOCK_SECONDS)
    except BadSignature:
        return False
    return True


def _give_session(token: str) -> None:
    @after_this_request
    def _cookie(resp: Response) -> Response:
        set_session_cookie(resp, token)
        return resp


def _login_body(user_id: int, role: str, info: sessions.SessionInfo, mfa_required: bool) -> dict[str, Any]:
    return {"user_id": user_id, "role": role, "mfa_required": mfa_required, "csrf_token": info.csrf_token,
            "expires_at": _iso(info.absolute_expires_at)}


# ---------------------------------------------------------------- sign-up and email verification


@auth_blp.route("/register", methods=["POST"])
@ip_limit("register_ip_limit")
@auth_blp.arguments(schemas.RegisterIn)
@auth_blp.response(201, schemas.MessageOut)
def register(body: dict[str, Any]) -> dict[str, Any]:
    """Sign up; a verification link goes to the address. The same answer whether or not it had an account."""
    if _signup_blocked():
        raise service.RegistrationRefused()
    try:
        service.register(body["email"], body["password"], body["name"], body["date_of_birth"], body["country"],
                         ip=client_ip())
    except service.RegistrationRefused:
        block = _block_signer().dumps("b")

        @after_this_request
        def _block(resp: Response) -> Response:
            resp.set_cookie(SIGNUP_BLOCK_COOKIE, block, max_age=SIGNUP_BLOCK_SECONDS, secure=True, httponly=True,
                            samesite="Lax", path="/")
            return resp

        raise
    return {"message": "Thanks. Check your inbox: we sent a link to confirm your email address."}


@auth_blp.route("/verify-email", methods=["POST"])
@auth_blp.arguments(schemas.TokenIn)
@auth_blp.response(200, schemas.VerifyOut)
def verify_email(body: dict[str, Any]) -> dict[str, Any]:
    """Follow a link from a verification (or email change) message."""
    purpose = service.verify_email(body["token"], ip=client_ip())
    return {"purpose": purpose, "message": "Your email address is confirmed."}


# ---------------------------------------------------------------- sign-in, second factor, sign-out, tokens


@auth_blp.route("/login", methods=["POST"])
@ip_limit("login_ip_limit")
@auth_blp.arguments(schemas.LoginIn)
@auth_blp.response(200, schemas.LoginOut)
def login(body: dict[str, Any]) -> dict[str, Any]:
    """Sign in with email and password (and `totp` when on); sets the `__Host-session` cookie.

    With two-factor authentication on and no `totp`, `mfa_required` is true: POST /api/v1/auth/mfa next.
    Unknown email and wrong password give the same 401.
    """
    with account_throttle("login_account_limit", "login", account_key(body["email"])):
        r = signin.login(body["email"], body["password"], totp=body.get("totp"), kind="web", ip=client_ip(),
                         user_agent=_agent(), previous_token=session_cookie())
    _give_session(r.session.token)
    return _login_body(r.user_id, r.role, r.session.info, r.mfa_required)


@auth_blp.route("/token", methods=["POST"])
@ip_limit("login_ip_limit")
@auth_blp.arguments(schemas.LoginIn)
@auth_blp.response(201, schemas.TokenOut)
def token(body: dict[str, Any]) -> dict[str, Any]:
    """Create a personal API token (`Authorization: Bearer <token>`); shown once. `totp` required when MFA is on."""
    with account_throttle("login_account_limit", "login", account_key(body["email"])):
        r = signin.login(body["email"], body["password"], totp=body.get("totp"), kind="api", ip=client_ip(),
                         user_agent=_agent())
    return {"token": r.session.token, "expires_at": _iso(r.session.info.absolute_expires_at)}


@auth_blp.route("/mfa", methods=["POST"])
@ip_limit("otp_ip_limit")
@login_required(allow_mfa_pending=True)
@auth_blp.arguments(schemas.MfaIn)
@auth_blp.response(200, schemas.LoginOut)
@auth_blp.doc(security=SECURITY)
def second_factor(body: dict[str, Any]) -> dict[str, Any]:
    """Pass the second factor of a signed-in session (TOTP or a recovery code); the session gets a new id."""
    with account_throttle("otp_account_limit", "otp", str(current_user_id())):
        new = signin.complete_mfa(g.session_id, current_user_id(), body["code"], ip=client_ip(), user_agent=_agent())
    if g.auth_via == "cookie":
        _give_session(new.token)
    return _login_body(new.info.user_id, new.info.role, new.info, False)


@auth_blp.route("/logout", methods=["POST"])
@login_required(allow_mfa_pending=True)
@auth_blp.response(204)
@auth_blp.doc(security=SECURITY)
def logout() -> None:
    """End this session (or revoke this personal token) server-side."""
    signin.logout(g.session_id, current_user_id(), ip=client_ip())

    @after_this_request
    def _clear(resp: Response) -> Response:
        clear_session_cookie(resp)
        return resp


# ---------------------------------------------------------------- password reset


RESET_SENT = "If an account uses this address, we sent it a link to choose a new password. It is valid 30 minutes."


@auth_blp.route("/password-reset", methods=["POST"])
@ip_limit("reset_ip_limit")
@auth_blp.arguments(schemas.ResetIn)
@auth_blp.response(202, schemas.MessageOut)
def password_reset(body: dict[str, Any]) -> dict[str, Any]:
    """Ask for a reset link. The same answer whether or not the address has an account."""
    from credits.web.limits import account_hit

    account_hit("reset_account_limit", "reset", account_key(body["email"]))
    signin.request_password_reset(body["email"], ip=client_ip())
    return {"message": RESET_SENT}


@auth_blp.route("/password-reset/confirm", methods=["POST"])
@ip_limit("reset_ip_limit")
@auth_blp.arguments(schemas.ResetConfirmIn)
@auth_blp.response(200, schemas.MessageOut)
def password_reset_confirm(body: dict[str, Any]) -> dict[str, Any]:
    """Choose a new password with the link's token. Every session ends; sign in again (with the second factor)."""
    signin.confirm_password_reset(body["token"], body["password"], ip=client_ip())
    return {"message": "Your password is changed. Please sign in."}


# ---------------------------------------------------------------- profile


def _profile_body(p: service.Profile, pending: bool = False) -> dict[str, Any]:
    return {"id": p.user_id, "email": p.email, "name": p.name, "date_of_birth": p.date_of_birth,
            "country": p.country, "role": p.role, "status": p.status, "email_verified": p.email_verified,
            "mfa_enabled": p.mfa_enabled, "phones": p.phones, "account_number": p.account_number,
            "currency": p.currency, "created_at": _iso(p.created_at), "money_frozen": p.money_frozen,
            "email_change_pending": pending,
            "csrf_token": g.session.csrf_token if g.auth_via == "cookie" else None}


@me_blp.route("", methods=["GET"])
@login_required
@me_blp.response(200, schemas.ProfileOut)
@me_blp.doc(security=SECURITY)
def get_me() -> dict[str, Any]:
    """The profile (decrypted personal data) of the signed-in user."""
    return _profile_body(service.get_profile(current_user_id()))


@me_blp.route("", methods=["PATCH"])
@login_required
@me_blp.arguments(schemas.ProfilePatchIn)
@me_blp.response(200, schemas.ProfileOut)
@me_blp.doc(security=SECURITY)
def patch_me(body: dict[str, Any]) -> dict[str, Any]:
    """Change name or country; add a phone number; change the email address (confirmed by a link to it).
    Email and phone changes need `current_password`."""
    with account_throttle("login_account_limit", "reauth", str(current_user_id())):
        r = service.update_profile(current_user_id(), body, ip=client_ip())
    return _profile_body(r.profile, r.email_change_pending)


@me_blp.route("/password", methods=["POST"])
@login_required
@me_blp.arguments(schemas.PasswordChangeIn)
@me_blp.response(204)
@me_blp.doc(security=SECURITY)
def change_password(body: dict[str, Any]) -> None:
    """Change the password; every other session and personal token ends; a notice is emailed."""
    with account_throttle("login_account_limit", "reauth", str(current_user_id())):
        signin.change_password(current_user_id(), body["current_password"], body["new_password"],
                               session_id=g.session_id, ip=client_ip())


@me_blp.route("/transfers", methods=["POST"])
@login_required
@me_blp.arguments(schemas.TransferIn)
@me_blp.response(201, schemas.TransferOut)
@me_blp.doc(security=SECURITY)
def send_transfer(body: dict[str, Any]) -> dict[str, Any]:
    """Transfer credit to another account (by email or account number), confirmed with the password or a
    second-factor code; both parties are notified. An Idempotency-Key header makes a retry safe."""
    with account_throttle("login_account_limit", "reauth", str(current_user_id())):
        r = transfers.send(current_user_id(), body["to"], body["amount"], password=body.get("password"),
                           totp=body.get("totp"), key=_transfer_key(), ip=client_ip())
    return {"id": r.transfer.id, "from_account": r.transfer.from_account, "to_account": r.transfer.to_account,
            "amount": money.format_micro(r.transfer.amount), "currency": r.currency,
            "balance": money.format_micro(r.balance), "available": money.format_micro(r.available),
            "created_at": r.transfer.created_at.isoformat()}


def _transfer_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    return f"transfer:{current_user_id()}:{key}"[:200] if key else None


# ---------------------------------------------------------------- wallet, statement, calls


@me_blp.route("/wallet", methods=["GET"])
@login_required
@me_blp.response(200, schemas.WalletOut)
@me_blp.doc(security=SECURITY)
def wallet() -> dict[str, Any]:
    """Balance, available credit (balance less holds of calls in progress), currency and lots with expiry."""
    w, lots = service.my_wallet(current_user_id())
    f = money.format_micro
    return {"account_number": w.account_number, "currency": w.currency, "balance": f(w.balance), "held": f(w.held),
            "available": f(w.available), "next_expiry_at": _iso(w.next_expiry_at),
            "lots": [{"id": lot.id, "source": lot.source, "granted": f(lot.granted), "remaining": f(lot.remaining),
                      "expires_at": _iso(lot.expires_at), "created_at": _iso(lot.created_at)} for lot in lots]}


@me_blp.route("/statement", methods=["GET"])
@login_required
@me_blp.arguments(schemas.PageQuery, location="query", unknown=RAISE)
@me_blp.response(200, schemas.StatementOut)
@me_blp.doc(security=SECURITY)
def statement(args: dict[str, Any]) -> dict[str, Any]:
    """The journal, newest first, with the running balance after each line; `?after=` the previous `next`."""
    page, currency = service.my_statement(current_user_id(), after=args.get("after"), limit=args["limit"])
    f = money.format_micro
    return {"currency": currency, "next": page.next_cursor,
            "lines": [{"tx_id": x.tx_id, "kind": x.kind, "memo": x.memo, "created_at": _iso(x.created_at),
                       # int(): on PostgreSQL the ledger's running balance after a cursor is a Decimal
                       "amount": f(int(x.amount)), "balance_after": f(int(x.balance_after))} for x in page.lines]}


def _call(r: Any) -> dict[str, Any]:
    def amount(v: int | None) -> str | None:
        return None if v is None else money.format_micro(v)

    return {"id": r.id, "call_id": r.call_id, "caller": r.caller, "callee": r.callee, "destination": r.destination,
            "status": r.status, "disposition": r.disposition, "authorized_at": _iso(r.authorized_at),
            "answered_at": _iso(r.answered_at), "ended_at": _iso(r.ended_at), "duration_s": r.duration_s,
            "billed_s": r.billed_s, "rate_per_minute": money.format_micro(r.rate_per_minute), "cost": amount(r.cost),
            "charged": amount(r.charged)}


@me_blp.route("/calls", methods=["GET"])
@login_required
@me_blp.arguments(schemas.CallsQuery, location="query", unknown=RAISE)
@me_blp.response(200, schemas.CallsOut)
@me_blp.doc(security=SECURITY, responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def calls(args: dict[str, Any]) -> Any:
    """Call records, newest first (`?start=&end=` ISO times with zone, `?after=` keyset); `?format=csv` for all
    of them in the range as CSV."""
    if args["format"] == "csv":
        lines: Iterator[str] = service.my_calls_csv(current_user_id(), start=args.get("start"), end=args.get("end"))
        return Response(stream_with_context(lines), mimetype="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="calls.csv"'})
    page = service.my_calls(current_user_id(), start=args.get("start"), end=args.get("end"), after=args.get("after"),
                            limit=args["limit"])
    return {"currency": page.currency, "next": page.next_cursor, "calls": [_call(r) for r in page.records]}


# ---------------------------------------------------------------- sessions


@me_blp.route("/sessions", methods=["GET"])
@login_required
@me_blp.response(200, schemas.SessionsOut)
@me_blp.doc(security=SECURITY)
def list_sessions() -> dict[str, Any]:
    """Signed-in browsers and personal API tokens, newest first, with where they were used from."""
    return {"sessions": [
        {"id": s.id, "kind": s.kind, "current": s.id == g.session_id, "created_at": _iso(s.created_at),
         "last_seen_at": _iso(s.last_seen_at), "expires_at": _iso(s.absolute_expires_at), "ip_prefix": s.ip_prefix,
         "user_agent": s.user_agent} for s in sessions.list_live(current_user_id())]}


@me_blp.route("/sessions", methods=["DELETE"])
@login_required
@me_blp.response(200, schemas.RevokedOut)
@me_blp.doc(security=SECURITY)
def revoke_other_sessions() -> dict[str, Any]:
    """Sign out everywhere else: every session and personal token but this one."""
    return {"revoked": sessions.revoke_all(current_user_id(), except_id=g.session_id, ip=client_ip())}


@me_blp.route("/sessions/<int:session_id>", methods=["DELETE"])
@login_required
@me_blp.response(204)
@me_blp.doc(security=SECURITY)
def revoke_session(session_id: int) -> None:
    """End one session or personal token (404 if it is not yours)."""
    sessions.revoke(session_id, user_id=current_user_id(), ip=client_ip())


# ---------------------------------------------------------------- two-factor authentication


@me_blp.route("/mfa/totp", methods=["POST"])
@login_required
@me_blp.arguments(schemas.PasswordIn)
@me_blp.response(201, schemas.EnrolmentOut)
@me_blp.doc(security=SECURITY)
def mfa_start(body: dict[str, Any]) -> dict[str, Any]:
    """Start TOTP set-up (password required): the seed, an otpauth:// URI and its QR code. Confirm with a code."""
    with account_throttle("login_account_limit", "reauth", str(current_user_id())):
        e = mfa.start_enrolment(current_user_id(), body["password"])
    return {"secret": e.secret, "otpauth_uri": e.otpauth_uri, "qr_svg": e.qr_svg}


@me_blp.route("/mfa/totp/confirm", methods=["POST"])
@ip_limit("otp_ip_limit")
@login_required
@me_blp.arguments(schemas.MfaIn)
@me_blp.response(200, schemas.ActivationOut)
@me_blp.doc(security=SECURITY)
def mfa_confirm(body: dict[str, Any]) -> dict[str, Any]:
    """Turn TOTP on with a current code; returns 10 single-use recovery codes (shown once)."""
    cookie = g.auth_via == "cookie"
    with account_throttle("otp_account_limit", "otp", str(current_user_id())):
        a = mfa.confirm_enrolment(current_user_id(), body["code"], session_id=g.session_id if cookie else None,
                                  ip=client_ip(), user_agent=_agent())
    if a.session is not None:
        _give_session(a.session.token)
    return {"recovery_codes": a.recovery_codes, "csrf_token": a.session.info.csrf_token if a.session else None}


@me_blp.route("/mfa/totp", methods=["DELETE"])
@ip_limit("otp_ip_limit")
@login_required
@me_blp.arguments(schemas.MfaDisableIn)
@me_blp.response(204)
@me_blp.doc(security=SECURITY)
def mfa_disable(body: dict[str, Any]) -> None:
    """Turn TOTP off (password and a current code). Not possible for staff accounts."""
    with account_throttle("otp_account_limit", "otp", str(current_user_id())):
        mfa.disable(current_user_id(), body["password"], body["code"], ip=client_ip())


@me_blp.route("/mfa/recovery-codes", methods=["POST"])
@ip_limit("otp_ip_limit")
@login_required
@me_blp.arguments(schemas.MfaIn)
@me_blp.response(200, schemas.RecoveryCodesOut)
@me_blp.doc(security=SECURITY)
def mfa_recovery_codes(body: dict[str, Any]) -> dict[str, Any]:
    """Replace the recovery codes (a current TOTP code required); the old ones stop working."""
    with account_throttle("otp_account_limit", "otp", str(current_user_id())):
        return {"recovery_codes": mfa.regenerate_recovery_codes(current_user_id(), body["code"], ip=client_ip())}


# ---------------------------------------------------------------- staff


@staff_sessions_blp.route("/accounts/<int:user_id>/sessions", methods=["DELETE"])
@staff_required("sessions.revoke")
@staff_sessions_blp.response(200, schemas.RevokedOut)
@staff_sessions_blp.doc(security=SECURITY)
def staff_revoke_sessions(user_id: int) -> dict[str, Any]:
    """Sign a customer out everywhere (audit-logged)."""
    return {"revoked": sessions.staff_revoke_all(current_user_id(), user_id)}


@staff_sessions_blp.route("/accounts/<int:user_id>/underage", methods=["POST"])
@staff_required("accounts.close_underage")
@staff_sessions_blp.response(204)
@staff_sessions_blp.doc(security=SECURITY)
def staff_close_underage(user_id: int) -> None:
    """The account belongs to a child under 13: close it and erase its personal data (audit-logged)."""
    service.close_underage(current_user_id(), user_id)
