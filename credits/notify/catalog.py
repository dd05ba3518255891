"""The email templates there are (templates/email/<name>.txt and .html) and the context keys each needs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmailTemplate:
    name: str
    #: Keys the caller must put in the context (rendering fails without them).
    required: tuple[str, ...]
    #: Keys the template shows when present.
    optional: tuple[str, ...] = ()
    #: A security notice: carries a "this wasn't me" link (wasnt_me_url, added by notify.notices).
    security: bool = False


_T = EmailTemplate
#: Every template: name -> what it needs. Times are ISO 8601 strings (templates show them with `| when`);
#: every template may also use `name` (the addressee's name) and `public_url` (added at rendering).
#: A test renders each with its required keys only.
CATALOG: dict[str, EmailTemplate] = {t.name: t for t in (
    _T("verify_email", ("link", "expires_at"), ("name", "at", "token")),
    _T("email_change_confirm", ("link", "expires_at", "new_email"), ("name", "at", "token")),
    _T("password_reset", ("link", "expires_at"), ("name", "at", "token")),
    _T("account_exists", ("link",), ("name", "at")),
    # kind: web | api; ip_prefix: the /24 or /48 network, never the address.
    _T("new_sign_in", ("at",), ("name", "ip_prefix", "user_agent", "kind"), security=True),
    # how: reset | change
    _T("password_changed", ("at",), ("name", "how"), security=True),
    # change: enabled | disabled | recovery_codes_regenerated
    _T("mfa_changed", ("at", "change"), ("name",), security=True),
    # Sent to the old address (to_old_address true) and to the new one (false).
    _T("email_changed", ("at", "old_email", "new_email", "to_old_address"), ("name",), security=True),
    _T("transfer_sent", ("at", "amount", "currency", "to_account"), ("name",), security=True),
    _T("transfer_received", ("at", "amount", "currency", "from_account"), ("name",), security=True),
    _T("compromise_report", ("at", "reference"), ("name", "since")),
    _T("unauthorized_transaction_report", ("at", "reference", "entries", "froze_money", "answer_by"),
       ("name", "since")),
    _T("purchase_receipt", ("at", "amount", "currency", "purchase_id"),
       ("name", "card_brand", "card_last4", "expires_at", "balance")),
    _T("auto_recharge_failed", ("at", "amount", "currency", "reason", "disabled"), ("name", "failures")),
    # link: the page where the customer completes the payment on-session (3-D Secure).
    _T("auto_recharge_action_required", ("at", "amount", "currency", "link"), ("name", "expires_at")),
    _T("expiry_reminder", ("amount", "currency", "expires_at", "days_left"), ("name",)),
    # To security officers (credits.payments.page_integrity, CHECKLIST I60). The service always passes page,
    # fingerprint, baseline_fingerprint, changes (list of lines) and accept_command; only `at` is required so
    # that the template also renders from the keys every template test knows.
    _T("payment_page_changed", ("at",),
       ("name", "page", "fingerprint", "baseline_fingerprint", "changes", "accept_command")),
)}

SECURITY_NOTICES = frozenset(name for name, t in CATALOG.items() if t.security)


def missing_keys(name: str, context: dict[str, object]) -> list[str]:
    """The required keys of template `name` that `context` lacks; raises KeyError for an unknown template."""
    return [key for key in CATALOG[name].required if key not in context]
