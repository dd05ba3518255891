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


#: Every response carries these (the CSP unless the view set its own).
FIXED_HEADERS = (
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(self)"),
)
#: And a private answer (signed in, an account path, a cookie set or sent, an Authorization header) these.
PRIVATE_HEADERS = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def private_response_headers(settings: config.Config) -> list[tuple[str, str]]:
    """The security headers of a private JSON answer (what `register` adds to one), for the switch lane."""
    return [("Content-Security-Policy", content_security_policy(settings)), *FIXED_HEADERS, *PRIVATE_HEADERS]


def register(app: Flask, settings: config.Config) -> None:
    csp = content_security_policy(settings)

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        h = resp.headers
        h.setdefault("Content-Security-Policy", csp)
        for name, value in FIXED_HEADERS:
            h[name] = value
        private = (getattr(g, "user_id", None) is not None or request.path.startswith(PRIVATE_PREFIXES)
                   or "Set-Cookie" in h or request.cookies.get("__Host-session") is not None
                   or request.headers.get("Authorization") is not None)
        if private:
            for name, value in PRIVATE_HEADERS:
                h[name] = value
        return resp
