"""Accounts: users, roles, status (the full accounts feature builds on this minimal record)."""
