"""Content-Security-Policy of payment pages: the app itself and the Stripe.js origin, nothing else (I56).

`payment_page_policy()` computes the header value from CREDITS_STRIPE_JS_URL (and CREDITS_STRIPE_API_BASE).
On Stripe, Stripe.js (https://js.stripe.com) talks to https://api.stripe.com and shows 3-D Secure in frames
from https://js.stripe.com and https://hooks.stripe.com, so those Stripe origins are allowed where Stripe's
documentation says. With a stand-in (localstripe serves its Stripe.js and its API on one origin) only that
origin is added. Decorate a payment page's view with `@payment_page` to send it (it replaces any default
CSP the app sets).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import make_response

from credits import config
from credits.config import Config
from credits.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
STRIPE_JS_ORIGIN = "https://js.stripe.com"
STRIPE_ORIGINS = {
    "script-src": ["https://js.stripe.com"],
    "frame-src": ["https://js.stripe.com", "https://hooks.stripe.com"],
    "connect-src": ["https://api.stripe.com"],
}


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL; raises ConfigError when it has no scheme or host."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"not an absolute http(s) URL: {url[:100]!r}")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def payment_page_policy(cfg: Config | None = None) -> str:
    """The CSP header value for a page that loads Stripe.js from the configured origin."""
    from credits.payments import provider

    cfg = cfg or config.current()
    js_origin = origin_of(provider.stripe_js_url(cfg))
    if js_origin == STRIPE_JS_ORIGIN:
        extra = STRIPE_ORIGINS
    else:
        extra = {"script-src": [js_origin], "frame-src": [js_origin], "connect-src": [js_origin]}
    directives = [
        "default-src 'self'",
        f"script-src 'self' {' '.join(extra['script-src'])}",
        f"frame-src 'self' {' '.join(extra['frame-src'])}",
        f"connect-src 'self' {' '.join(extra['connect-src'])}",
        "img-src 'self' data:",
        "style-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


def payment_page(view: F) -> F:
    """Send the payment-page CSP with this view's response."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        response = make_response(view(*args, **kwargs))
        response.headers["Content-Security-Policy"] = payment_page_policy()
        return response

    return wrapper  # type: ignore[return-value]
