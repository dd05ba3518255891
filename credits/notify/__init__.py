"""Notifications: the outbox table, email rendering and SMTP delivery."""
