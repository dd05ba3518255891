"""Customer web pages: dashboard, buying credit, sign-up, sign-in and account security."""
