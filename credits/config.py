"""Settings from CREDITS_* environment variables: one dataclass, validated at start."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from credits.errors import ConfigError

ENVIRONMENTS = ("development", "test", "production")
EXPIRY_POLICIES = ("per_lot", "rolling")
MAIL_BACKENDS = ("smtp", "memory", "file")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEV_SECRET = "dev-insecure-secret-key-change-me"  # noqa: S105 - a named default, refused in production
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    """All settings of the service. Build it with `Config.from_env()`; every field has a safe dev default."""

    env: str = "development"
    database_url: str = ""
    secret_key: str = DEV_SECRET
    encryption_keys: str = ""
    blind_index_key: str = ""
    stripe_secret_key: str = ""
    stripe_publishable_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    stripe_js_url: str = "https://js.stripe.com/v3/"
    redis_url: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_tls: str = "none"
    mail_from: str = "credits@localhost"
    default_currency: str = "USD"
    credit_validity_days: int = 180
    expiry_policy: str = "per_lot"
    max_call_duration_s: int = 7200
    transfer_min: str = "1.00"
    transfer_max: str = "200.00"
    transfer_daily_limit: str = "500.00"
    hold_grace_s: int = 120
    #: 0: each job runs on its own interval; N: every job every N seconds (tests, demos).
    job_interval_s: int = 0
    # Fault injection for the single-runner test: a job keeps its lock at least this long.
    job_min_runtime_ms: int = 0
    # Sessions (K78): a web session ends after this much inactivity, and in any case this long after sign-in.
    session_idle_minutes: int = 30
    session_absolute_hours: int = 12
    # Personal API tokens (POST /api/v1/auth/token): idle timeout and absolute lifetime.
    api_token_idle_days: int = 30
    api_token_days: int = 90
    # Throttling (J66, J67), Flask-Limiter syntax; storage is Redis when CREDITS_REDIS_URL is set.
    login_account_limit: str = "5 per minute; 10 per 15 minutes; 100 per day"
    login_ip_limit: str = "30 per minute; 300 per hour"
    register_ip_limit: str = "10 per hour"
    reset_ip_limit: str = "10 per hour"
    reset_account_limit: str = "3 per hour"
    otp_account_limit: str = "5 per minute; 20 per hour"
    otp_ip_limit: str = "30 per minute"
    #: Reverse proxies in front of the app that append to X-Forwarded-For (0: trust no client-sent header).
    proxy_count: int = 0
    #: Key prefix for rate-limit counters in Redis (several deployments may share one Redis).
    ratelimit_prefix: str = "credits"
    #: Accept a TOTP code from the previous/next 30-second step as well (clock drift); 0 = current step only.
    totp_valid_window: int = 1
    password_reset_minutes: int = 30
    email_verify_hours: int = 48
    #: Base of the links in emails ("this wasn't me", verification, receipts); https in production.
    public_url: str = "http://127.0.0.1:5000"
    #: smtp: deliver through CREDITS_SMTP_*; memory: keep sent mail in the process (development without a relay);
    #: file: write each message as an .eml file into mail_dir (demos: its links can be followed).
    mail_backend: str = "smtp"
    #: Where CREDITS_MAIL_BACKEND=file writes; absolute, since the app and jobs may start in other directories.
    mail_dir: str = str(PROJECT_ROOT / "instance" / "mail")
    smtp_timeout_s: int = 10
    #: CA bundle (PEM) that signs the relay's certificate, when it is not publicly trusted; "" = system store.
    smtp_ca_file: str = ""
    #: deliver-outbox: tries per message before it is dead-lettered, and the back-off (doubling from base, capped).
    mail_max_attempts: int = 8
    mail_retry_base_s: int = 60
    mail_retry_max_s: int = 6 * 3600
    log_level: str = "INFO"
    #: json (JSON lines) or text (one readable line per record); "" = text in development, json otherwise.
    log_format: str = ""
    # Payments (DESIGN §6). Gateway: auto = Stripe when CREDITS_STRIPE_SECRET_KEY or CREDITS_STRIPE_API_BASE is
    # set (a stand-in such as localstripe gets a test key), otherwise the in-process fake (never in production).
    payment_gateway: str = "auto"
    #: Credit packages offered, comma-separated decimal amounts in the wallet's currency.
    purchase_packages: str = "5.00,10.00,20.00,50.00"
    #: Custom amounts are accepted between these (inclusive).
    purchase_custom_min: str = "5.00"
    purchase_custom_max: str = "500.00"
    #: A refund above this amount needs a second staff member's approval (M89).
    refund_approval_above: str = "50.00"
    #: A staff member's refunds in 24 hours above this total need a second approval too (M89).
    refund_daily_limit: str = "200.00"
    #: Auto-recharge: at most this much in 24 hours per wallet; a customer's monthly cap may not exceed the max.
    auto_recharge_daily_cap: str = "100.00"
    auto_recharge_monthly_cap_max: str = "500.00"
    #: Back-off after a failed auto-recharge: this many seconds, times 4 for each further consecutive failure.
    auto_recharge_backoff_s: int = 3600
    #: Consecutive failures after which auto-recharge is switched off (and the customer told).
    auto_recharge_max_failures: int = 3
    #: Reconciliation settles purchases stuck (pending, processing, requires_action) for this long.
    reconcile_after_minutes: int = 15
    #: A purchase still waiting for 3-D Secure after this long is marked failed (a late success still grants).
    requires_action_expiry_hours: int = 48
    #: How long a dispute's hold on credit lasts at most (disputes take up to about four months).
    dispute_hold_days: int = 180
    #: Lifetime of the emailed link to pay an auto-recharge on-session.
    pay_link_hours: int = 72
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Read CREDITS_<FIELD> variables, apply overrides, validate; raise ConfigError on bad values."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(f"CREDITS_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError as exc:
                    raise ConfigError(f"CREDITS_{f.name.upper()} must be an integer, got {raw!r}") from exc
            else:
                values[f.name] = raw
        values.update(overrides)
        cfg = cls(**values)  # type: ignore[arg-type]
        if not cfg.database_url:
            instance = PROJECT_ROOT / "instance"
            name = "test.db" if cfg.env == "test" else "credits.db"
            cfg = cls(**{**values, "database_url": f"sqlite:///{instance / name}"})  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def effective_log_format(self) -> str:
        """CREDITS_LOG_FORMAT when set, else text in development (a person reads the terminal) and JSON lines
        everywhere else."""
        return self.log_format or ("text" if self.env == "development" else "json")

    def validate(self) -> None:
        """Raise ConfigError naming every bad setting; production refuses default or missing secrets."""
        problems = self._general_problems() + self._secret_problems()
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    def _general_problems(self) -> list[str]:
        from credits import money
        from credits.logging import LOG_FORMATS

        problems: list[str] = []
        checks = [
            (self.env in ENVIRONMENTS, f"CREDITS_ENV must be one of {', '.join(ENVIRONMENTS)}"),
            (self.expiry_policy in EXPIRY_POLICIES,
             f"CREDITS_EXPIRY_POLICY must be one of {', '.join(EXPIRY_POLICIES)}"),
            (money.is_known_currency(self.default_currency),
             "CREDITS_DEFAULT_CURRENCY must be an ISO 4217 code this service knows"),
            (self.credit_validity_days >= 1, "CREDITS_CREDIT_VALIDITY_DAYS must be at least 1"),
            (1 <= self.max_call_duration_s <= 86400, "CREDITS_MAX_CALL_DURATION_S must be between 1 and 86400"),
            (self.smtp_tls in ("none", "starttls", "ssl"), "CREDITS_SMTP_TLS must be none, starttls or ssl"),
            (self.job_interval_s >= 0, "CREDITS_JOB_INTERVAL_S must be 0 or more"),
            (self.mail_backend in MAIL_BACKENDS, f"CREDITS_MAIL_BACKEND must be one of {', '.join(MAIL_BACKENDS)}"),
            (not (self.is_production and self.mail_backend == "memory"),
             "CREDITS_MAIL_BACKEND=memory would lose every email in production"),
            (not (self.is_production and self.mail_backend == "file"),
             "CREDITS_MAIL_BACKEND=file would deliver no email in production (it only writes files)"),
            (1 <= self.smtp_port <= 65535, "CREDITS_SMTP_PORT must be between 1 and 65535"),
            (1 <= self.smtp_timeout_s <= 300, "CREDITS_SMTP_TIMEOUT_S must be between 1 and 300"),
            (1 <= self.mail_max_attempts <= 100, "CREDITS_MAIL_MAX_ATTEMPTS must be between 1 and 100"),
            (1 <= self.mail_retry_base_s <= self.mail_retry_max_s,
             "CREDITS_MAIL_RETRY_BASE_S must be at least 1 and at most CREDITS_MAIL_RETRY_MAX_S"),
            (self.public_url.startswith(("https://", "http://")) and not self.public_url.endswith("/"),
             "CREDITS_PUBLIC_URL must be an http(s) URL without a trailing slash"),
            (not self.is_production or self.public_url.startswith("https://"),
             "CREDITS_PUBLIC_URL must be https in production"),
            (self.log_level.upper() in LOG_LEVELS, f"CREDITS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}"),
            (self.log_format in ("", *LOG_FORMATS), f"CREDITS_LOG_FORMAT must be {' or '.join(LOG_FORMATS)}"),
            (1 <= self.session_idle_minutes <= 24 * 60, "CREDITS_SESSION_IDLE_MINUTES must be between 1 and 1440"),
            (1 <= self.session_absolute_hours <= 24 * 30, "CREDITS_SESSION_ABSOLUTE_HOURS must be between 1 and 720"),
            (1 <= self.api_token_idle_days <= self.api_token_days <= 366,
             "CREDITS_API_TOKEN_IDLE_DAYS <= CREDITS_API_TOKEN_DAYS <= 366"),
            (0 <= self.proxy_count <= 5, "CREDITS_PROXY_COUNT must be between 0 and 5"),
            (self.totp_valid_window in (0, 1), "CREDITS_TOTP_VALID_WINDOW must be 0 or 1"),
            (1 <= self.password_reset_minutes <= 30, "CREDITS_PASSWORD_RESET_MINUTES must be between 1 and 30"),
            (1 <= self.email_verify_hours <= 24 * 7, "CREDITS_EMAIL_VERIFY_HOURS must be between 1 and 168"),
        ]
        problems += [message for ok, message in checks if not ok]
        problems += self._mail_dir_problems()
        problems += self._payment_problems()
        for name in ("transfer_min", "transfer_max", "transfer_daily_limit"):
            try:
                money.parse_amount(getattr(self, name), self.default_currency)
            except Exception:  # noqa: BLE001 - any parse failure is a config problem
                problems.append(f"CREDITS_{name.upper()} must be a positive decimal amount")
        return problems

    def _mail_dir_problems(self) -> list[str]:
        if self.mail_backend != "file":
            return []  # the directory is not used: a stale setting must not stop the service
        if not os.path.isabs(self.mail_dir):
            return ["CREDITS_MAIL_DIR must be an absolute path (CREDITS_MAIL_BACKEND=file writes there)"]
        # A missing directory is made at the first email; a file in its place would fail every delivery.
        if os.path.exists(self.mail_dir) and not os.path.isdir(self.mail_dir):
            return ["CREDITS_MAIL_DIR must be a directory, not a file"]
        return []

    def _payment_problems(self) -> list[str]:
        from credits import money

        problems: list[str] = []
        if self.payment_gateway not in ("auto", "stripe", "fake"):
            problems.append("CREDITS_PAYMENT_GATEWAY must be auto, stripe or fake")
        if self.is_production and self.payment_gateway == "fake":
            problems.append("CREDITS_PAYMENT_GATEWAY=fake is refused in production")
        amounts: dict[str, int] = {}
        for name in ("purchase_custom_min", "purchase_custom_max", "refund_approval_above", "refund_daily_limit",
                     "auto_recharge_daily_cap", "auto_recharge_monthly_cap_max"):
            try:
                amounts[name] = money.parse_amount(getattr(self, name), self.default_currency)
            except Exception:  # noqa: BLE001 - any parse failure is a config problem
                problems.append(f"CREDITS_{name.upper()} must be a positive decimal amount")
        try:
            packages = [money.parse_amount(p.strip(), self.default_currency)
                        for p in self.purchase_packages.split(",") if p.strip()]
            if not packages:
                raise ValueError
        except Exception:  # noqa: BLE001
            problems.append("CREDITS_PURCHASE_PACKAGES must be comma-separated positive decimal amounts")
        if amounts.get("purchase_custom_min", 0) > amounts.get("purchase_custom_max", money.MAX_AMOUNT):
            problems.append("CREDITS_PURCHASE_CUSTOM_MIN must not exceed CREDITS_PURCHASE_CUSTOM_MAX")
        checks = [
            (self.auto_recharge_backoff_s >= 1, "CREDITS_AUTO_RECHARGE_BACKOFF_S must be at least 1"),
            (1 <= self.auto_recharge_max_failures <= 10, "CREDITS_AUTO_RECHARGE_MAX_FAILURES must be between 1 and 10"),
            (1 <= self.reconcile_after_minutes <= 24 * 60, "CREDITS_RECONCILE_AFTER_MINUTES must be 1-1440"),
            (1 <= self.requires_action_expiry_hours <= 24 * 30, "CREDITS_REQUIRES_ACTION_EXPIRY_HOURS must be 1-720"),
            (1 <= self.dispute_hold_days <= 730, "CREDITS_DISPUTE_HOLD_DAYS must be between 1 and 730"),
            (1 <= self.pay_link_hours <= 24 * 14, "CREDITS_PAY_LINK_HOURS must be between 1 and 336"),
        ]
        problems += [message for ok, message in checks if not ok]
        return problems

    def _secret_problems(self) -> list[str]:
        problems: list[str] = []
        if self.is_production:
            if not self.secret_key or self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
                problems.append("CREDITS_SECRET_KEY must be set to a random value of 32+ characters in production")
            if self.database_url.startswith("sqlite"):
                problems.append("CREDITS_DATABASE_URL must point at PostgreSQL in production")
            if not self.encryption_keys:
                problems.append("CREDITS_ENCRYPTION_KEYS must be set in production")
            if not self.blind_index_key:
                problems.append("CREDITS_BLIND_INDEX_KEY must be set in production")
        if self.blind_index_key:
            try:
                if len(base64.b64decode(self.blind_index_key, validate=True)) != 32:
                    raise ValueError
            except (ValueError, binascii.Error):
                problems.append("CREDITS_BLIND_INDEX_KEY must be base64 of 32 bytes")
        return problems

    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver for PostgreSQL."""
        url = self.database_url
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return url


_current: Config | None = None


def install(cfg: Config) -> Config:
    """Make `cfg` the settings that services read with `current()`."""
    global _current
    _current = cfg
    return cfg


def current() -> Config:
    """The installed settings (create_app or a CLI entry point installs them); defaults if none were."""
    global _current
    if _current is None:
        _current = Config.from_env()
    return _current
