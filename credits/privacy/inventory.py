"""The data inventory: every column of every model, classified (CHECKLIST A1).

Each entry says what category of data a column holds, why it is kept (purpose, legal basis), how long,
whether an access request exports it, what erasure does to it, and whether it may appear in logs.
A test fails on any model column missing here, so a new column cannot ship unclassified.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = ("identity", "contact", "payment", "traffic", "usage", "security", "operational")
ERASURE = ("delete", "null", "pseudonymise", "retain", "none")
LOG_POLICY = ("never", "masked", "allowed")


@dataclass(frozen=True)
class Entry:
    category: str
    purpose: str
    legal_basis: str
    retention: str
    export: bool
    erasure: str
    log: str = "allowed"
    retain_reason: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES or self.erasure not in ERASURE or self.log not in LOG_POLICY:
            raise ValueError(f"bad inventory entry {self}")
        if self.erasure == "retain" and not self.retain_reason:
            raise ValueError("a retained column needs a reason")


def _ops(purpose: str = "running the service") -> Entry:
    """A column that holds no personal data (ids, amounts, states, timestamps of system events)."""
    return Entry("operational", purpose, "legitimate interest", "as long as the row", False, "none")


_LEDGER = "keeping account of prepaid credit"
_MONEY_RETAIN = "accounting and tax law require financial records"
_ledger_money = Entry("usage", _LEDGER, "contract", "10 years (accounting)", True, "retain",
                      retain_reason=_MONEY_RETAIN)

_BILLING = "billing calls and answering billing disputes"
_traffic = Entry("traffic", _BILLING, "contract", "billing-challenge window, then anonymised", True, "pseudonymise",
                 log="never")
_call_usage = Entry("traffic", _BILLING, "contract", "billing-challenge window, aggregates kept", True, "retain",
                    log="allowed", retain_reason="cost and time of calls are financial records")

_session_info = Entry("security", "letting the customer see and revoke sessions", "legitimate interest",
                     "session lifetime + 30 days", True, "delete", log="masked")
_security = Entry("security", "detecting and investigating account abuse", "legitimate interest", "1 year", True,
                  "pseudonymise", log="masked")
_report = Entry("security", "investigating the customer's report", "legitimate interest", "case closed + 2 years",
                True, "retain", retain_reason="evidence for fraud and dispute handling")

_PAYMENTS = "taking card payments for credit, refunds and chargebacks"
_PAGE_INTEGRITY = "detecting unauthorised changes to payment pages (PCI DSS 11.6.1)"
_payment_record = Entry("payment", _PAYMENTS, "contract", "10 years (accounting)", True, "retain",
                        retain_reason=_MONEY_RETAIN)
_gateway_id = Entry("payment", _PAYMENTS, "contract", "account lifetime + 10 years", False, "retain", log="masked",
                    retain_reason="links our payment records to the gateway's for refunds and chargebacks")
_card = Entry("payment", "showing the customer which saved card is which", "contract", "until the card is removed",
              True, "null")

INVENTORY: dict[str, Entry] = {
    # users
    "users.id": _ops(),
    "users.email_enc": Entry("contact", "sign-in, receipts and security notices", "contract", "account lifetime", True,
                             "pseudonymise", log="never"),
    "users.email_bidx": Entry("contact", "finding an account by email without decrypting", "contract",
                              "account lifetime", False, "pseudonymise", log="never"),
    "users.name_enc": Entry("identity", "addressing the customer", "contract", "account lifetime", True, "null",
                            log="never"),
    "users.dob_enc": Entry("identity", "age check (no accounts under 13)", "legal obligation", "account lifetime", True,
                           "null", log="never"),
    "users.country": Entry("identity", "tax and regulatory rules of the customer's country", "contract",
                           "account lifetime", True, "null"),
    "users.email_verified_at": _ops("account state"),
    "users.password_changed_at": Entry("security", "account security", "legitimate interest", "account lifetime",
                                       True, "null"),
    "users.last_login_at": Entry("security", "account security", "legitimate interest", "account lifetime", True,
                                 "null"),
    "users.mfa_secret_enc": Entry("security", "two-factor authentication", "contract", "until MFA is removed", False,
                                  "delete", log="never"),
    "users.mfa_enabled_at": _ops("account security"),
    "users.mfa_last_step": _ops("TOTP replay guard"),
    "users.reset_required": _ops("account security"),
    "users.money_frozen_at": _ops("account security"),
    "users.money_frozen_reason": Entry("security", "account security", "legitimate interest", "account lifetime",
                                       True, "null", log="masked"),
    "users.password_hash": Entry("security", "authentication", "contract", "account lifetime", False, "delete",
                                 log="never"),
    "users.role": _ops("authorisation"),
    "users.status": _ops("account state"),
    "users.created_at": Entry("usage", "account history", "contract", "account lifetime", True, "retain",
                              retain_reason="needed to reconcile financial records"),
    # wallets
    "wallets.id": _ops(),
    "wallets.user_id": _ops(),
    "wallets.account_number": Entry("identity", "identifying the account to the switch and support", "contract",
                                    "account lifetime + 10 years", True, "retain", log="masked",
                                    retain_reason=_MONEY_RETAIN),
    "wallets.currency": _ops(),
    "wallets.balance": _ledger_money,
    "wallets.held": _ops(_LEDGER),
    "wallets.next_expiry_at": _ops(_LEDGER),
    "wallets.created_at": _ops(),
    # lots
    "lots.id": _ops(), "lots.wallet_id": _ops(), "lots.source": _ledger_money, "lots.granted": _ledger_money,
    "lots.remaining": _ledger_money, "lots.expires_at": _ledger_money, "lots.created_at": _ledger_money,
    "lots.grant_tx_id": _ops(), "lots.origin_lot_id": _ops(), "lots.reference": _ops(_LEDGER),
    # journal
    "journal_transactions.id": _ops(), "journal_transactions.kind": _ledger_money,
    "journal_transactions.created_at": _ledger_money, "journal_transactions.idempotency_key": _ops(_LEDGER),
    "journal_transactions.memo": Entry("usage", _LEDGER, "contract", "10 years (accounting)", True, "retain",
                                       log="masked", retain_reason=_MONEY_RETAIN),
    "journal_transactions.actor": _ops("accountability of staff actions"),
    "postings.id": _ops(), "postings.tx_id": _ops(), "postings.wallet_id": _ops(), "postings.lot_id": _ops(),
    "postings.system_account": _ops(), "postings.amount": _ledger_money,
    # holds (one per call while it runs)
    "holds.id": _ops(), "holds.wallet_id": _ops(), "holds.amount": _ops(_LEDGER), "holds.status": _ops(_LEDGER),
    "holds.created_at": _ops(_LEDGER), "holds.expires_at": _ops(_LEDGER), "holds.finished_at": _ops(_LEDGER),
    "holds.charged": _ops(_LEDGER), "holds.shortfall": _ops(_LEDGER), "holds.tx_id": _ops(),
    "holds.key": Entry("traffic", "matching the switch's call to its reservation", "contract",
                       "billing-challenge window", False, "pseudonymise", log="masked"),
    # transfers
    "transfers.id": _ops(), "transfers.tx_id": _ops(), "transfers.from_wallet_id": _ledger_money,
    "transfers.to_wallet_id": _ledger_money, "transfers.amount": _ledger_money, "transfers.created_at": _ledger_money,
    "transfers.idempotency_key": _ops(_LEDGER),
    # call records: traffic data, kept for billing only, then anonymised (CHECKLIST F43)
    **{f"calls.{c}": _traffic for c in ("caller", "callee")},
    **{f"calls.{c}": _call_usage for c in (
        "authorized_at", "answered_at", "ended_at", "completed_at", "duration_s", "billed_s", "cost", "charged",
        "disposition", "end_reason", "rate_destination", "rate_prefix", "rate_per_minute", "connect_fee",
        "first_increment_s", "next_increment_s", "max_duration_s", "reserved")},
    "calls.call_id": Entry("traffic", _BILLING, "contract", "billing-challenge window", False, "pseudonymise",
                           log="masked"),
    "calls.id": _ops(), "calls.wallet_id": _ops(), "calls.hold_id": _ops(), "calls.source": _ops(),
    "calls.status": _ops(_BILLING), "calls.flagged": _ops("support review"),
    "calls.flag_reason": _ops("support review"),
    # audit log (never personal data in clear: ids, amounts, reasons)
    "audit_log.id": _ops(), "audit_log.at": _ops("accountability"), "audit_log.actor": _ops("accountability"),
    "audit_log.action": _ops("accountability"), "audit_log.subject": _ops("accountability"),
    "audit_log.detail": Entry("security", "accountability of money corrections and staff access",
                              "legal obligation", "7 years", False, "retain", log="masked",
                              retain_reason="tamper-evident record required for audits"),
    "audit_log.prev_hash": _ops("tamper evidence"), "audit_log.hash": _ops("tamper evidence"),
    # wallets: call settings
    "wallets.rate_plan_id": _ops("rating calls"),
    "wallets.max_concurrent_calls": _ops("sharing credit between simultaneous calls"),
    # rate plans (tariffs: no personal data)
    "rate_plans.id": _ops(), "rate_plans.name": _ops(), "rate_plans.currency": _ops(), "rate_plans.version": _ops(),
    "rate_plans.created_at": _ops(), "rate_plans.updated_at": _ops(),
    "rates.id": _ops(), "rates.plan_id": _ops(), "rates.prefix": _ops(), "rates.destination": _ops(),
    "rates.rate_per_minute": _ops(), "rates.connect_fee": _ops(), "rates.first_increment_s": _ops(),
    "rates.next_increment_s": _ops(), "rates.effective_from": _ops(),
    # caller numbers: how the switch knows the customer
    "caller_numbers.id": _ops(), "caller_numbers.wallet_id": _ops(), "caller_numbers.created_at": _ops(),
    "caller_numbers.number_enc": Entry("contact", "identifying the caller to the switch", "contract",
                                       "account lifetime", True, "delete", log="never"),
    "caller_numbers.number_bidx": Entry("contact", "finding the caller's account without decrypting", "contract",
                                        "account lifetime", False, "delete", log="never"),
    # API keys (machines, not people)
    "api_keys.id": _ops(), "api_keys.name": _ops(), "api_keys.prefix": _ops("identifying a key in logs"),
    "api_keys.key_hash": Entry("security", "authenticating the switch", "legitimate interest", "until revoked",
                               False, "retain", log="never",
                               retain_reason="a machine credential, not personal data"),
    "api_keys.scope": _ops(), "api_keys.allowed_ips": _ops("restricting where a key may be used"),
    "api_keys.created_at": _ops(), "api_keys.revoked_at": _ops(), "api_keys.last_used_at": _ops(),
    # MFA recovery codes, sessions and email tokens
    "recovery_codes.id": _ops(), "recovery_codes.user_id": _ops(),
    "recovery_codes.code_hash": Entry("security", "MFA recovery", "contract", "until used or replaced", False, "delete",
                                      log="never"),
    "recovery_codes.used_at": _ops("account security"),
    "sessions.id": _ops(), "sessions.user_id": _ops(), "sessions.kind": _ops(),
    "sessions.token_hash": Entry("security", "keeping the customer signed in", "contract", "session lifetime", False,
                                 "delete", log="never"),
    "sessions.csrf_token": Entry("security", "CSRF protection", "legitimate interest", "session lifetime", False,
                                 "delete", log="never"),
    "sessions.created_at": _session_info, "sessions.last_seen_at": _session_info,
    "sessions.absolute_expires_at": _ops(), "sessions.revoked_at": _ops(), "sessions.mfa_ok": _ops(),
    "sessions.ip_prefix": _session_info, "sessions.user_agent": _session_info,
    "email_tokens.id": _ops(), "email_tokens.user_id": _ops(), "email_tokens.purpose": _ops(),
    "email_tokens.token_hash": Entry("security", "single-use links", "contract", "until used or expired", False,
                                     "delete", log="never"),
    "email_tokens.created_at": _ops(), "email_tokens.expires_at": _ops(), "email_tokens.used_at": _ops(),
    "email_tokens.data_enc": Entry("contact", "completing an email change", "contract", "until used or expired",
                                   False, "delete", log="never"),
    # notification outbox
    "outbox.id": _ops(), "outbox.user_id": _ops(), "outbox.template": _ops(), "outbox.status": _ops(),
    "outbox.attempts": _ops(), "outbox.next_attempt_at": _ops(), "outbox.last_error": _ops(),
    "outbox.created_at": _ops(), "outbox.sent_at": _ops(), "outbox.dedupe_key": _ops(),
    "outbox.recipient_enc": Entry("contact", "delivering notices the customer is owed", "contract",
                                  "until delivered + 30 days", False, "delete", log="never"),
    "outbox.context_enc": Entry("contact", "delivering notices the customer is owed", "contract",
                                "until delivered + 30 days", False, "delete", log="never"),
    # security events and reports
    "security_events.id": _ops(), "security_events.user_id": _ops(), "security_events.kind": _security,
    "security_events.at": _security, "security_events.ip_prefix": _security, "security_events.detail": _security,
    "security_reports.id": _ops(), "security_reports.reference": _ops("case reference"),
    "security_reports.kind": _ops(), "security_reports.user_id": _ops(), "security_reports.created_at": _report,
    "security_reports.since": _report, "security_reports.status": _ops(), "security_reports.froze_money": _ops(),
    "security_reports.description_enc": Entry("security", "investigating the customer's report", "legitimate interest",
                                              "case closed + 2 years", True, "retain", log="never",
                                              retain_reason="evidence for fraud and dispute handling"),
    "security_reports.resolved_at": _report, "security_reports.resolved_by": _ops(),
    "security_reports.resolution": _report,
    "security_report_entries.report_id": _ops(), "security_report_entries.tx_id": _ops(),
    # payments (CHECKLIST I57: gateway ids, brand, last 4 digits and expiry only; never a card number)
    "gateway_customers.id": _ops(), "gateway_customers.user_id": _ops(), "gateway_customers.created_at": _ops(),
    "gateway_customers.gateway_customer_id": _gateway_id,
    "payment_methods.id": _ops(), "payment_methods.user_id": _ops(), "payment_methods.status": _ops(),
    "payment_methods.setup_intent_id": _gateway_id, "payment_methods.gateway_payment_method_id": _gateway_id,
    **{f"payment_methods.{c}": _card for c in ("brand", "last4", "exp_month", "exp_year")},
    "payment_methods.created_at": _ops(), "payment_methods.saved_at": _ops(), "payment_methods.removed_at": _ops(),
    "purchases.id": _ops(), "purchases.user_id": _ops(), "purchases.wallet_id": _ops(),
    "purchases.payment_method_id": _ops(), "purchases.remember": _ops(), "purchases.lot_id": _ops(),
    "purchases.idempotency_key": _ops(_PAYMENTS), "purchases.payment_intent_id": _payment_record,
    **{f"purchases.{c}": _payment_record for c in (
        "kind", "status", "amount", "amount_minor", "currency", "failure_code", "created_at", "updated_at",
        "settled_at")},
    "webhook_events.id": _ops(), "webhook_events.event_id": _ops(_PAYMENTS), "webhook_events.type": _ops(_PAYMENTS),
    "webhook_events.object_id": _ops(_PAYMENTS), "webhook_events.received_at": _ops(_PAYMENTS),
    "webhook_events.processed_at": _ops(_PAYMENTS), "webhook_events.outcome": _ops(_PAYMENTS),
    **{f"auto_recharge_settings.{c}": _ops("auto-recharge the customer asked for") for c in (
        "id", "wallet_id", "user_id", "enabled", "threshold", "amount", "monthly_cap", "payment_method_id",
        "consecutive_failures", "next_attempt_at", "disabled_reason", "updated_at")},
    "refunds.id": _ops(), "refunds.purchase_id": _ops(), "refunds.idempotency_key": _ops(_PAYMENTS),
    "refunds.debit_tx_id": _ops(), "refunds.restore_tx_id": _ops(),
    "refunds.requested_by": _ops("accountability of staff actions"),
    "refunds.approved_by": _ops("accountability of staff actions"),
    **{f"refunds.{c}": _payment_record for c in (
        "amount", "amount_minor", "currency", "status", "gateway_refund_id", "failure_reason", "created_at",
        "decided_at", "finished_at", "ticket")},
    "refunds.reason": Entry("payment", _PAYMENTS, "contract", "10 years (accounting)", True, "retain", log="masked",
                            retain_reason=_MONEY_RETAIN),
    "disputes.id": _ops(), "disputes.purchase_id": _ops(),
    **{f"disputes.{c}": _payment_record for c in (
        "gateway_dispute_id", "status", "amount", "reason", "held", "written_off", "created_at", "closed_at")},
    # jobs
    "job_locks.name": _ops(), "job_locks.holder": _ops(), "job_locks.locked_until": _ops(),
    "job_runs.id": _ops(), "job_runs.name": _ops(), "job_runs.holder": _ops(), "job_runs.started_at": _ops(),
    "job_runs.finished_at": _ops(), "job_runs.status": _ops(), "job_runs.result": _ops(),
    # payment-page change detector (CHECKLIST I60): page paths, fingerprints and the normalised page (no tokens,
    # no user data: it is the synthetic monitor account's page); who accepted a baseline is a staff user id.
    **{f"payment_pages.{c}": _ops(_PAGE_INTEGRITY) for c in (
        "id", "path", "created_at", "current_fingerprint", "last_checked_at", "last_outcome", "last_error",
        "baseline_fingerprint", "baseline_accepted_at", "baseline_accepted_by", "baseline_reason")},
    **{f"payment_page_versions.{c}": _ops(_PAGE_INTEGRITY) for c in (
        "id", "page_id", "fingerprint", "parts", "first_seen_at", "last_seen_at", "alerted_at")},
}


def entry(table: str, column: str) -> Entry | None:
    return INVENTORY.get(f"{table}.{column}")


def unclassified(metadata: object) -> list[str]:
    """Columns of the given metadata that the inventory does not classify ("table.column")."""
    missing = []
    for table in getattr(metadata, "sorted_tables", []):
        for column in table.columns:
            if f"{table.name}.{column.name}" not in INVENTORY:
                missing.append(f"{table.name}.{column.name}")
    return missing
