"""Security headers on every response (CHECKLIST K80): HSTS, CSP, nosniff, Referrer-Policy, framing; no-store on
authenticated and account responses."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from credits import config

#: Paths whose answers are about one person (or set a session): never cached by the browser or a proxy.
PRIVATE_PREFIXES = ("/api/v1/auth", "/api/v1/me", "/api/v1/staff")


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def content_security_policy(settings: config.Config) -> str:
    """Self only, plus Stripe (script, frames, API); no plugins, no <base>, no framing by anyone."""
    stripe = sorted({o for o in (_origin(settings.stripe_js_url), _origin(settings.stripe_api_base)) if o}
                    | {"https://js.stripe.com"})
    frames = sorted(set(stripe) | {"https://hooks.stripe.com"})
    api = sorted(set(stripe) | {"https://api.stripe.com"})
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' {' '.join(stripe)}",
        "style-src 'self'",
        "img-src 'self' data:",
        f"connect-src 'self' {' '.join(api)}",
        f"frame-src {' '.join(frames)}",
        "font-src 'self'",
        "form-action 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ])


def register(app: Flask, settings: config.Config) -> None:
    csp = content_security_policy(settings)

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        h = resp.headers
        h["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        h.setdefault("Content-Security-Policy", csp)
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Frame-Options"] = "DENY"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=(self)"
        private = (getattr(g, "user_id", None) is not None or request.path.startswith(PRIVATE_PREFIXES)
                   or "Set-Cookie" in h or request.cookies.get("__Host-session") is not None
                   or request.headers.get("Authorization") is not None)
        if private:
            h["Cache-Control"] = "no-store"
            h["Pragma"] = "no-cache"
        return resp
