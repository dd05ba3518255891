"""Stripe-Signature webhook signing and verification (t=<unix time>,v1=<HMAC-SHA256 of "t.body">), one copy.

Both adapters verify with this code rather than `stripe.Webhook.construct_event`, because the tolerance
must be measured against `credits.clock` (tests freeze it) and not the wall clock. The scheme is Stripe's:
a contract test checks that headers made here pass the official library's verifier and that headers made
by localstripe pass ours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from credits import clock
from credits.payments.errors import InvalidWebhookPayload, SignatureExpired, SignatureMismatch, SignatureMissing
from credits.payments.gateway import DEFAULT_WEBHOOK_TOLERANCE_S, WebhookEvent

SCHEME = "v1"


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex HMAC-SHA256 of b"<timestamp>.<payload>" keyed with the webhook secret."""
    signed = str(int(timestamp)).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Return a Stripe-Signature header value for `payload`, timestamped now (per credits.clock) by default."""
    ts = int(clock.now().timestamp()) if timestamp is None else int(timestamp)
    return f"t={ts},{SCHEME}={compute_signature(payload, secret, ts)}"


def verify(
    payload: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_WEBHOOK_TOLERANCE_S,
    now: int | None = None,
) -> int:
    """Check the header against the raw payload; return its timestamp.

    Any one of several v1 signatures may match (Stripe sends two while a secret is being rolled). A
    timestamp older than `tolerance_s` is refused, as Stripe's libraries do; a newer one is not (it cannot
    be a replay, and a frozen test clock may lag the sender's). Raises SignatureMissing, SignatureMismatch,
    SignatureExpired.
    """
    if not secret:
        # A missing secret would make every HMAC "valid" for an attacker who knows it is empty.
        raise SignatureMismatch("no webhook secret is configured")
    if not header:
        raise SignatureMissing("no Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise SignatureMissing("the Stripe-Signature timestamp is not a number") from exc
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureMissing("the Stripe-Signature header has no timestamp or no v1 signature")
    expected = compute_signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureMismatch("no signature matches the payload")
    current = int(clock.now().timestamp()) if now is None else now
    if tolerance_s > 0 and current - timestamp > tolerance_s:
        raise SignatureExpired(f"the signature is {current - timestamp} s old, beyond the {tolerance_s} s tolerance")
    return timestamp


def parse_event(payload: bytes) -> WebhookEvent:
    """Parse a verified body into a WebhookEvent; raise InvalidWebhookPayload when it is not an event."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidWebhookPayload("the webhook body is not JSON") from exc
    if not isinstance(body, dict):
        raise InvalidWebhookPayload("the webhook body is not an object")
    event_id, event_type, data = body.get("id"), body.get("type"), body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_id, str) or not isinstance(event_type, str) or not isinstance(obj, dict):
        raise InvalidWebhookPayload("the webhook body has no id, type or data.object")
    created = body.get("created")
    return WebhookEvent(
        id=event_id,
        type=event_type,
        created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
        data_object=obj,
        livemode=bool(body.get("livemode", False)),
        payload=body,
    )


def construct_event(
    payload: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_WEBHOOK_TOLERANCE_S,
) -> WebhookEvent:
    """Verify then parse: the one path from a raw webhook request to an event both adapters share."""
    if not isinstance(payload, bytes | bytearray):
        raise InvalidWebhookPayload("verify the raw request body (bytes), not a decoded or re-encoded copy")
    verify(bytes(payload), header, secret, tolerance_s=tolerance_s)
    return parse_event(bytes(payload))


def encode_event(event: Mapping[str, Any]) -> bytes:
    """Serialise an event body the way a gateway would send it (stable key order, UTF-8)."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode("utf-8")
