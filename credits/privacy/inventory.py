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
_ledger_money = Entry("usage", _LEDGER, "contract", "10 years (accounting)", True, "retain", retain_reason=_MONEY_RETAIN)

INVENTORY: dict[str, Entry] = {
    # users
    "users.id": _ops(),
    "users.email": Entry("contact", "sign-in, receipts and security notices", "contract", "account lifetime", True,
                         "pseudonymise", log="never"),
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
    # audit log (never personal data in clear: ids, amounts, reasons)
    "audit_log.id": _ops(), "audit_log.at": _ops("accountability"), "audit_log.actor": _ops("accountability"),
    "audit_log.action": _ops("accountability"), "audit_log.subject": _ops("accountability"),
    "audit_log.detail": Entry("security", "accountability of money corrections and staff access",
                              "legal obligation", "7 years", False, "retain", log="masked",
                              retain_reason="tamper-evident record required for audits"),
    "audit_log.prev_hash": _ops("tamper evidence"), "audit_log.hash": _ops("tamper evidence"),
    # jobs
    "job_locks.name": _ops(), "job_locks.holder": _ops(), "job_locks.locked_until": _ops(),
    "job_runs.id": _ops(), "job_runs.name": _ops(), "job_runs.holder": _ops(), "job_runs.started_at": _ops(),
    "job_runs.finished_at": _ops(), "job_runs.status": _ops(), "job_runs.result": _ops(),
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
