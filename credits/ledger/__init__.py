"""The credit ledger: wallets, lots, journal and postings, holds."""
