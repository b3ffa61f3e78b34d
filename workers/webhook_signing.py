"""How a webhook delivery is signed: the Standard Webhooks specification (standardwebhooks.com), symmetric `v1`.

Each POST carries

    webhook-id: evt_<32 hex digits>         the same on every try of one event (an idempotency key)
    webhook-timestamp: <unix seconds>       when this try was made
    webhook-signature: v1,<base64> [v1,<base64>]

where each signature is the HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under one configured key
(`GENQ_WEBHOOK_SECRET`, then `GENQ_WEBHOOK_SECRET_PREVIOUS` while a key is rotated), space-separated, so a
receiver holding either key accepts the delivery. A key is the bytes behind `whsec_<base64>`, or the UTF-8
bytes of any other string (`config.settings.webhook_key`).

The webhook-id is derived from the CloudEvent's `id` (`{ref}/{status}/{attempt}`, which may hold dots, and the
specification wants none in the signed prefix): the first 128 bits of its SHA-256, in hex.

Until receivers have moved over, the headers of genq's first scheme are sent too (deprecated):
`X-Genq-Timestamp` and `X-Genq-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`, keyed with
`GENQ_WEBHOOK_SECRET` exactly as configured (its UTF-8 bytes, even in the `whsec_` form).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from config.settings import Settings

CONTENT_TYPE = "application/cloudevents+json"


def webhook_id(event_id: str) -> str:
    """The `webhook-id` of an event: stable across tries and re-deliveries, free of dots."""
    return "evt_" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


def signatures(keys: tuple[bytes, ...], msg_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys)


def legacy_signature(secret: str, timestamp: str, body: bytes) -> str:
    """genq's first scheme (`X-Genq-Signature`), kept while receivers move to the standard headers."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def delivery_headers(settings: Settings, event_id: str, body: bytes, now: float) -> dict[str, str]:
    """The headers of one try at delivering `body` (the event as stored), at time `now`."""
    timestamp = str(int(now))
    msg_id = webhook_id(event_id)
    headers = {
        "Content-Type": CONTENT_TYPE,
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "X-Genq-Timestamp": timestamp,
    }
    keys = settings.webhook_keys
    if keys:
        headers["webhook-signature"] = signatures(keys, msg_id, timestamp, body)
    if settings.webhook_secret is not None:
        headers["X-Genq-Signature"] = legacy_signature(settings.webhook_secret.get_secret_value(), timestamp, body)
    return headers


def unsigned_warning(settings: Settings) -> str | None:
    """What to say, loudly, at start when webhooks would go out unsigned (a URL and no secret); else None."""
    if settings.webhook_url is None or settings.webhook_keys:
        return None
    return (
        "GENQ_WEBHOOK_URL is set but GENQ_WEBHOOK_SECRET is not: webhook deliveries go out UNSIGNED, and any "
        "receiver that checks signatures will refuse them while one that does not can be fed forged events. "
        "Set GENQ_WEBHOOK_SECRET (e.g. whsec_ followed by 32 random bytes in base64)."
    )
