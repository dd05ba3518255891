"""Customer web pages (templates/store/): sign-up, email and password links, sign-in with the second factor,
two-factor set-up, sessions, security settings with the compromise report, the dashboard, buying credit, and
the page an emailed pay link opens to confirm an auto-recharge with the bank.

Each view checks the form's CSRF token, calls one service function and renders; a GET never changes state
(CHECKLIST K81), except that opening a pay link records what the payment gateway has already decided (it
cannot pay anything) and so may spend a link whose payment is final. Signed-in pages authenticate with the
`__Host-session` cookie and expect the session's CSRF token in the form field `csrf_token`. Signed-out forms
use a double-submit token: a random `__Host-csrf` cookie and, in the form, its HMAC under the app's secret
key. Bad input re-renders the form with the service's message and changes nothing. The buy page's card flow
runs in static/buy.js against the JSON API (DESIGN §6); the pay-link page's 3-D Secure step runs in
static/pay.js. No page has an inline script, so the CSP stays strict.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, TypeVar, overload

from flask import Blueprint, Response, after_this_request, g, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from credits import config, money
from credits.accounts import mfa, sessions, signin
from credits.accounts import service as accounts
from credits.accounts.api import RESET_SENT, SIGNUP_BLOCK_COOKIE, SIGNUP_BLOCK_SECONDS, _block_signer, _signup_blocked
from credits.errors import DomainError, NotFound, Unauthorized, ValidationError
from credits.payments import auto_recharge, notices, provider
from credits.payments.errors import PaymentError
from credits.security import service as security
from credits.store import service
from credits.web.auth import SAFE_METHODS, clear_session_cookie, session_cookie, set_session_cookie
from credits.web.csp import payment_page
from credits.web.limits import account_hit, account_key, account_throttle, client_ip, ip_limit

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("store", __name__, static_folder="static", static_url_path="/assets")

ANON_CSRF_COOKIE = "__Host-csrf"
CSRF_FIELD = "csrf_token"


class FormExpired(DomainError):
    """A form came back without the CSRF token of the page that showed it (or of this browser)."""

    status = 400
    code = "csrf_failed"
    title = "This form has expired"

    def __init__(self) -> None:
        super().__init__("Go back, reload the page and try again.")


# ---------------------------------------------------------------- rendering


@bp.app_template_filter("money")
def _money(value: int, currency: str) -> str:
    return money.format_display(value, currency)


@bp.app_template_filter("amount")
def _amount(value: int, currency: str) -> str:
    """A plain decimal in the currency's precision ("10.00"), as the purchase API takes it."""
    return money.format_display(value, currency).split(" ")[0]


@bp.app_template_filter("when")
def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC") if value else ""


@bp.app_template_filter("day")
def _day(value: datetime | date | None) -> str:
    return value.strftime("%d %B %Y") if value else ""


def _render(template: str, status: int = 200, **values: Any) -> Response:
    resp = make_response(render_template(f"store/{template}", **values), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.errorhandler(DomainError)
def _refused(exc: DomainError) -> Response:
    resp = _render("message.html", exc.status, title=exc.title, message=exc.message if exc.safe else None)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    message = exc.description if (exc.code or 500) < 500 else None
    if exc.code == 429:
        message = "Too many attempts. Please wait a little and try again."
    return _render("message.html", exc.code or 500, title=exc.name, message=message)


# ---------------------------------------------------------------- CSRF and the signed-in session


def _mac(value: str) -> str:
    key = config.current().secret_key.encode()
    return hmac.new(key, b"csrf:" + value.encode(), hashlib.sha256).hexdigest()


def anon_csrf_token() -> str:
    """The signed-out form token of this browser; sets the `__Host-csrf` cookie on first use."""
    value = request.cookies.get(ANON_CSRF_COOKIE, "")
    if not 20 <= len(value) <= 100:
        value = secrets.token_urlsafe(32)

        @after_this_request
        def _cookie(resp: Response) -> Response:
            resp.set_cookie(ANON_CSRF_COOKIE, value, secure=True, httponly=True, samesite="Lax", path="/")
            return resp

    return _mac(value)


def check_anon_csrf() -> None:
    """Raise FormExpired unless the form carries the HMAC of this browser's `__Host-csrf` cookie."""
    value = request.cookies.get(ANON_CSRF_COOKIE, "")
    presented = request.form.get(CSRF_FIELD, "")
    if not value or not hmac.compare_digest(presented.encode(), _mac(value).encode()):
        raise FormExpired()


@overload
def signed_in(view: F) -> F: ...
@overload
def signed_in(*, allow_mfa_pending: bool = False) -> Callable[[F], F]: ...


def signed_in(view: F | None = None, *, allow_mfa_pending: bool = False) -> Any:
    """Serve the page only to a live web session: otherwise redirect to sign-in (or to the second factor).

    Unsafe methods need the session's CSRF token in the form (FormExpired otherwise). Sets `g.user_id`,
    `g.session_id` and `g.session` like credits.web.auth.login_required does.
    """

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                info = sessions.resolve(session_cookie(), kind="web")
            except Unauthorized:
                return _redirect("store.login_form", 302)
            if info.mfa_pending and not allow_mfa_pending:
                return _redirect("store.mfa_form", 302)
            if request.method not in SAFE_METHODS:
                presented = request.form.get(CSRF_FIELD, "")
                if not hmac.compare_digest(presented.encode(), info.csrf_token.encode()):
                    raise FormExpired()
            g.user_id, g.role, g.session_id, g.session, g.auth_via = (info.user_id, info.role, info.id, info,
                                                                       "cookie")
            g.store_signed_in = not info.mfa_pending
            return fn(*args, **kwargs)

        wrapper.login_required = True  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator(view) if view is not None else decorator


def _agent() -> str | None:
    return request.user_agent.string or None


def _redirect(endpoint: str, status: int = 303) -> Response:
    return make_response(redirect(url_for(endpoint), status))


def _with_session(resp: Response, token: str) -> Response:
    set_session_cookie(resp, token)
    return resp


def _form(*names: str) -> dict[str, str]:
    return {name: request.form.get(name, "") for name in names}


# ---------------------------------------------------------------- sign-up and email verification

SIGNUP_FIELDS = ("email", "name", "day", "month", "year", "country")


def _signup_page(status: int = 200, error: str | None = None, **form: str) -> Response:
    return _render("signup.html", status, csrf_token=anon_csrf_token(), error=error, form=form,
                   months=service.MONTHS)


@bp.get("/signup")
def signup_form() -> Response:
    return _signup_page()


@bp.post("/signup")
@ip_limit("register_ip_limit")
def signup() -> Response:
    check_anon_csrf()
    form = _form(*SIGNUP_FIELDS)
    if _signup_blocked():
        return _signup_page(403, accounts.RegistrationRefused().message, **form)
    try:
        service.sign_up(form["email"], request.form.get("password", ""), form["name"], form["day"], form["month"],
                        form["year"], form["country"], ip=client_ip())
    except accounts.RegistrationRefused as exc:
        resp = _render("message.html", 403, title=exc.title, message=exc.message)
        resp.set_cookie(SIGNUP_BLOCK_COOKIE, _block_signer().dumps("b"), max_age=SIGNUP_BLOCK_SECONDS, secure=True,
                        httponly=True, samesite="Lax", path="/")
        return resp
    except DomainError as exc:
        return _signup_page(exc.status, exc.message, **form)
    return _render("message.html", title="Check your inbox",
                   message="Thanks. We sent a link to confirm your email address: follow it to finish.")


@bp.get("/verify-email")
def verify_email_form() -> Response:
    # Following the link only shows a button: a GET changes nothing (mail scanners fetch links too).
    return _render("verify_email.html", token=request.args.get("token", ""), csrf_token=anon_csrf_token())


@bp.post("/verify-email")
def verify_email() -> Response:
    check_anon_csrf()
    try:
        accounts.verify_email(request.form.get("token", ""), ip=client_ip())
    except DomainError as exc:
        return _render("message.html", exc.status, title=exc.title,
                       message="Sign in and ask for a new link from your dashboard, or sign up again.")
    return _render("message.html", title="Your email address is confirmed", message="You can now sign in.",
                   link=(url_for("store.login_form"), "Sign in"))


# ---------------------------------------------------------------- sign-in, second factor, sign-out


def _login_page(status: int = 200, error: str | None = None, email: str = "") -> Response:
    return _render("login.html", status, csrf_token=anon_csrf_token(), error=error, email=email)


@bp.get("/login")
def login_form() -> Response:
    return _login_page()


@bp.post("/login")
@ip_limit("login_ip_limit")
def login() -> Response:
    check_anon_csrf()
    email, password = request.form.get("email", ""), request.form.get("password", "")
    try:
        with account_throttle("login_account_limit", "login", account_key(email)):
            r = signin.login(email, password, kind="web", ip=client_ip(), user_agent=_agent(),
                             previous_token=session_cookie())
    except signin.PasswordResetRequired:
        return _login_page(403, "For your safety, choose a new password first: use \"Forgot your password?\" "
                                "below.", email)
    except DomainError as exc:
        return _login_page(exc.status, exc.message, email)
    target = "store.mfa_form" if r.mfa_required else "store.dashboard"
    return _with_session(_redirect(target), r.session.token)


@bp.get("/login/mfa")
@signed_in(allow_mfa_pending=True)
def mfa_form() -> Response:
    if not g.session.mfa_pending:
        return _redirect("store.dashboard", 302)
    return _render("login_mfa.html", csrf_token=g.session.csrf_token)


@bp.post("/login/mfa")
@ip_limit("otp_ip_limit")
@signed_in(allow_mfa_pending=True)
def mfa_step() -> Response:
    try:
        with account_throttle("otp_account_limit", "otp", str(g.user_id)):
            new = signin.complete_mfa(g.session_id, g.user_id, request.form.get("code", ""), ip=client_ip(),
                                      user_agent=_agent())
    except DomainError as exc:
        return _render("login_mfa.html", exc.status, csrf_token=g.session.csrf_token, error=exc.message)
    return _with_session(_redirect("store.dashboard"), new.token)


@bp.post("/logout")
@signed_in(allow_mfa_pending=True)
def logout() -> Response:
    signin.logout(g.session_id, g.user_id, ip=client_ip())
    resp = _redirect("store.login_form")
    clear_session_cookie(resp)
    return resp


# ---------------------------------------------------------------- password reset


@bp.get("/forgot-password")
def forgot_form() -> Response:
    return _render("forgot_password.html", csrf_token=anon_csrf_token())


@bp.post("/forgot-password")
@ip_limit("reset_ip_limit")
def forgot() -> Response:
    check_anon_csrf()
    email = request.form.get("email", "")
    account_hit("reset_account_limit", "reset", account_key(email))
    signin.request_password_reset(email, ip=client_ip())
    return _render("message.html", title="Check your inbox", message=RESET_SENT)


@bp.get("/reset-password")
def reset_form() -> Response:
    return _render("reset_password.html", token=request.args.get("token", ""), csrf_token=anon_csrf_token())


@bp.post("/reset-password")
@ip_limit("reset_ip_limit")
def reset() -> Response:
    check_anon_csrf()
    token = request.form.get("token", "")
    try:
        signin.confirm_password_reset(token, request.form.get("password", ""), ip=client_ip())
    except signin.InvalidToken as exc:
        return _render("message.html", exc.status, title=exc.title,
                       message="Ask for a new link: links work once, for 30 minutes.",
                       link=(url_for("store.forgot_form"), "Ask for a new link"))
    except DomainError as exc:
        return _render("reset_password.html", exc.status, token=token, csrf_token=anon_csrf_token(),
                       error=exc.message)
    return _render("message.html", title="Your password is changed",
                   message="Every device was signed out. Sign in with your new password.",
                   link=(url_for("store.login_form"), "Sign in"))


# ---------------------------------------------------------------- dashboard and buying credit


@bp.get("/dashboard")
@signed_in
def dashboard() -> Response:
    return _render("dashboard.html", d=service.dashboard(g.user_id))


@bp.get("/buy")
@signed_in
@payment_page
def buy() -> Response:
    return _render("buy.html", p=service.buy_page(g.user_id), csrf_token=g.session.csrf_token)


# ---------------------------------------------------------------- paying an auto-recharge from an emailed link


def _pay_page(token: str, *, after_confirm: bool = False) -> Response:
    """The pay-link page in the state of its purchase, settled with the gateway first.

    The emailed token is the credential, so no sign-in is needed; the page shows the amount and the state of
    the payment, nothing else of the account. The link is spent once the payment is final.
    """
    try:
        p = auto_recharge.pay_link_purchase(token)
    except NotFound:
        return _render("pay.html", 404, state="gone", hours=config.current().pay_link_hours)
    except PaymentError as exc:  # the gateway could not be asked: the customer may try the link again
        return _render("message.html", exc.status, title=exc.title, message=exc.message if exc.safe else None)
    values: dict[str, Any] = {"amount": p.amount, "currency": p.currency}
    if p.status == "requires_action" and p.client_secret:
        return _render("pay.html", state="confirm", token=token, client_secret=p.client_secret,
                       after_confirm=after_confirm, csrf_token=anon_csrf_token(),
                       stripe_js_url=provider.stripe_js_url(), publishable_key=provider.publishable_key(), **values)
    if p.status in ("succeeded", "failed"):
        return _render("pay.html", state=p.status, reason=notices.reason_text(p.failure_code), **values)
    return _render("pay.html", state="waiting", **values)


@bp.get("/pay")
@payment_page
def pay_form() -> Response:
    # Settling with the gateway is all a GET does: it records what the bank already decided, never pays.
    return _pay_page(request.args.get("token", ""))


@bp.post("/pay")
@payment_page
def pay() -> Response:
    """After stripe.confirmCardPayment in the browser (static/pay.js): settle, then show the outcome."""
    check_anon_csrf()
    return _pay_page(request.form.get("token", ""), after_confirm=True)


# ---------------------------------------------------------------- security settings and the compromise report


def _since(value: str) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError("Enter the date as YYYY-MM-DD, or leave it empty.", field="since") from exc
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@bp.get("/settings/security")
@signed_in
def security_settings() -> Response:
    return _render("security.html", s=service.security_overview(g.user_id), csrf_token=g.session.csrf_token)


@bp.post("/settings/security/compromised")
@signed_in
def report_compromise() -> Response:
    form = _form("since", "description")
    try:
        r = security.report_compromise(g.user_id, since=_since(form["since"]),
                                       description=form["description"] or None, ip=client_ip())
    except DomainError as exc:
        return _render("message.html", exc.status, title="Nothing was reported", message=exc.message,
                       link=(url_for("store.security_settings"), "Back to security settings"))
    g.store_signed_in = False
    resp = _render("compromise_reported.html", reference=r.reference)
    clear_session_cookie(resp)  # this session ended with the others
    return resp


# ---------------------------------------------------------------- two-factor authentication


@bp.get("/settings/mfa")
@signed_in
def mfa_settings() -> Response:
    return _render("mfa.html", mfa_enabled=accounts.get_profile(g.user_id).mfa_enabled,
                   csrf_token=g.session.csrf_token)


@bp.post("/settings/mfa")
@signed_in
def mfa_start() -> Response:
    try:
        with account_throttle("login_account_limit", "reauth", str(g.user_id)):
            e = mfa.start_enrolment(g.user_id, request.form.get("password", ""))
    except DomainError as exc:
        return _render("mfa.html", exc.status, mfa_enabled=exc.code == "conflict", csrf_token=g.session.csrf_token,
                       error=exc.message)
    return _render("mfa_confirm.html", enrolment=e, csrf_token=g.session.csrf_token,
                   secret_groups=[e.secret[i : i + 4] for i in range(0, len(e.secret), 4)])


@bp.post("/settings/mfa/confirm")
@ip_limit("otp_ip_limit")
@signed_in
def mfa_confirm() -> Response:
    try:
        with account_throttle("otp_account_limit", "otp", str(g.user_id)):
            a = mfa.confirm_enrolment(g.user_id, request.form.get("code", ""), session_id=g.session_id,
                                      ip=client_ip(), user_agent=_agent())
    except DomainError as exc:
        return _render("mfa_confirm.html", exc.status, enrolment=None, csrf_token=g.session.csrf_token,
                       error=exc.message)
    if a.session is not None:
        g.session = a.session.info  # the page's sign-out form needs the new session's token
    resp = _render("mfa_codes.html", codes=a.recovery_codes)
    return _with_session(resp, a.session.token) if a.session is not None else resp


# ---------------------------------------------------------------- sessions


@bp.get("/settings/sessions")
@signed_in
def sessions_page() -> Response:
    return _render("sessions.html", sessions=sessions.list_live(g.user_id), current=g.session_id,
                   csrf_token=g.session.csrf_token)


@bp.post("/settings/sessions/<int:session_id>/revoke")
@signed_in
def revoke_session(session_id: int) -> Response:
    sessions.revoke(session_id, user_id=g.user_id, ip=client_ip())
    if session_id != g.session_id:
        return _redirect("store.sessions_page")
    resp = _redirect("store.login_form")
    clear_session_cookie(resp)
    return resp


@bp.post("/settings/sessions/revoke-others")
@signed_in
def revoke_other_sessions() -> Response:
    sessions.revoke_all(g.user_id, except_id=g.session_id, ip=client_ip())
    return _redirect("store.sessions_page")
