"""Payments: the card gateway port and its adapters (Stripe, localstripe, an in-process fake)."""
