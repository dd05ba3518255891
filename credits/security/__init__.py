"""Security: security events, compromise and unauthorised-transaction reports."""
