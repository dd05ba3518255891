"""The one place that picks the payment gateway (and what the browser needs to reach it) from the settings.

CREDITS_PAYMENT_GATEWAY:
- `stripe`: StripeGateway with CREDITS_STRIPE_SECRET_KEY against CREDITS_STRIPE_API_BASE (empty: api.stripe.com).
- `fake`: the in-process FakeGateway (refused in production). No browser can pay through it: for tests and
  for development without localstripe.
- `auto` (default): `stripe` when a secret key or an API base is set, otherwise `fake` (production: `stripe`,
  which then refuses to start without a key). With an API base and no key outside production (localstripe,
  as `./scripts/run` sets it up) the localstripe test key is used.

Tests install their own gateway with `install()` (a FakeGateway with fault knobs, or StripeGateway on a
localstripe they started).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from urllib.parse import urlsplit

from credits import config
from credits.config import Config
from credits.payments.gateway import PaymentGateway

DEFAULT_JS_URL = "https://js.stripe.com/v3/"
_lock = threading.Lock()
_installed: PaymentGateway | None = None
_built: tuple[Config, PaymentGateway] | None = None


def kind(cfg: Config) -> str:
    """`stripe` or `fake`: what CREDITS_PAYMENT_GATEWAY resolves to."""
    if cfg.payment_gateway != "auto":
        return cfg.payment_gateway
    if cfg.stripe_secret_key or cfg.stripe_api_base or cfg.is_production:
        return "stripe"
    return "fake"


def _stand_in(cfg: Config) -> bool:
    """True when the API base points somewhere other than Stripe (localstripe)."""
    return bool(cfg.stripe_api_base) and urlsplit(cfg.stripe_api_base).hostname != "api.stripe.com"


def build(cfg: Config) -> PaymentGateway:
    """A new gateway for these settings. Raises ConfigError (no key in production, fake in production)."""
    if kind(cfg) == "fake":
        from credits.errors import ConfigError
        from credits.payments.fake_gateway import FAKE_WEBHOOK_SECRET, FakeGateway

        if cfg.is_production:
            raise ConfigError("the fake payment gateway is refused in production")
        return FakeGateway(webhook_secret=cfg.stripe_webhook_secret or FAKE_WEBHOOK_SECRET)
    from credits.payments.localstripe_server import TEST_SECRET_KEY
    from credits.payments.stripe_gateway import StripeGateway

    if not cfg.stripe_secret_key and _stand_in(cfg) and not cfg.is_production:
        cfg = replace(cfg, stripe_secret_key=TEST_SECRET_KEY)
    return StripeGateway.from_config(cfg)


def gateway() -> PaymentGateway:
    """The gateway services use: the installed one, else one built (once per settings) from the settings."""
    global _built
    if _installed is not None:
        return _installed
    cfg = config.current()
    with _lock:
        if _built is None or _built[0] is not cfg:
            _built = (cfg, build(cfg))
        return _built[1]


def install(gw: PaymentGateway | None) -> PaymentGateway | None:
    """Make `gw` the gateway services use (None: build from the settings again); return the previous one."""
    global _installed
    previous, _installed = _installed, gw
    return previous


def publishable_key(cfg: Config | None = None) -> str:
    """The key the browser's Stripe.js is initialised with (localstripe takes any pk_ key)."""
    cfg = cfg or config.current()
    if cfg.stripe_publishable_key:
        return cfg.stripe_publishable_key
    from credits.payments.localstripe_server import TEST_PUBLISHABLE_KEY

    return TEST_PUBLISHABLE_KEY if not cfg.is_production else ""


def stripe_js_url(cfg: Config | None = None) -> str:
    """Where payment pages load Stripe.js from: CREDITS_STRIPE_JS_URL, or a stand-in's own copy of it."""
    cfg = cfg or config.current()
    if cfg.stripe_js_url == DEFAULT_JS_URL and _stand_in(cfg):
        return cfg.stripe_api_base.rstrip("/") + "/js.stripe.com/v3/"
    return cfg.stripe_js_url
