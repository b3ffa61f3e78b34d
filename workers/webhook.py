"""The optional webhook sink: every event of `genq:events` POSTed to a URL, signed, retried, dead-lettered.

Delivery reads the stream with a consumer group (`genq-webhook`), so each event is delivered at least once
however many workers run it: a new event is read once, and one whose delivery failed stays pending and is
claimed again (XAUTOCLAIM) after `retry_after_s`. After `webhook_max_attempts` failed tries the event goes
to the stream `genq:webhook:dead` with the last error, and is acknowledged.

The target is the batch's own webhook (`genq batch --webhook URL`) if it has one, else `GENQ_WEBHOOK_URL`;
events with neither are acknowledged unsent. Each POST carries the CloudEvent as its body and

    X-Genq-Timestamp: <unix seconds>
    X-Genq-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under GENQ_WEBHOOK_SECRET>

so a receiver can check both origin and freshness.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, cast

import httpx
import redis

from workers import keys
from workers.runtime import Runtime
from workers.steps import log

BATCH_WEBHOOK_FIELD = "webhook_url"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0


def _ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, keys.WEBHOOK_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def deliver_pending(
    rt: Runtime, http: httpx.Client, *, count: int = 100, retry_after_s: float = 10.0, now: float
) -> DeliveryReport:
    """One round: retry events whose last try failed long enough ago, then send new ones."""
    client, stream = rt.store.redis, rt.settings.event_stream
    _ensure_group(client, stream)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    report = DeliveryReport()
    # redis-py types stream replies loosely; with decode_responses they are lists of (id, {field: value}).
    claimed = client.xautoclaim(
        stream, keys.WEBHOOK_GROUP, consumer, min_idle_time=int(retry_after_s * 1000), start_id="0-0", count=count
    )
    fresh = cast(list[Any], client.xreadgroup(keys.WEBHOOK_GROUP, consumer, {stream: ">"}, count=count) or [])
    entries: list[tuple[str, dict[str, str]]] = list(claimed[1]) + [e for _, batch in fresh for e in batch]
    for entry_id, fields in entries:
        if fields:  # trimmed entries come back empty
            _deliver_one(rt, http, entry_id, fields["event"], report, now)
        else:
            client.xack(stream, keys.WEBHOOK_GROUP, entry_id)
    return report


def _target(rt: Runtime, event: dict[str, Any]) -> str | None:
    batch_id = (event.get("data") or {}).get("batch_id")
    if batch_id:
        own = cast(str | None, rt.store.redis.hget(keys.batch(str(batch_id)), BATCH_WEBHOOK_FIELD))
        if own:
            return own
    return rt.settings.webhook_url


def _deliver_one(rt: Runtime, http: httpx.Client, entry_id: str, raw: str, report: DeliveryReport, now: float) -> None:
    client, stream = rt.store.redis, rt.settings.event_stream
    event = json.loads(raw)
    url = _target(rt, event)
    if url is None:
        client.xack(stream, keys.WEBHOOK_GROUP, entry_id)
        report.skipped += 1
        return
    body = raw.encode()
    timestamp = str(int(now))
    headers = {"Content-Type": "application/cloudevents+json", "X-Genq-Timestamp": timestamp}
    if rt.settings.webhook_secret is not None:
        headers["X-Genq-Signature"] = signature(rt.settings.webhook_secret.get_secret_value(), timestamp, body)
    try:
        response = http.post(url, content=body, headers=headers)
        error = None if response.is_success else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    if error is None:
        client.xack(stream, keys.WEBHOOK_GROUP, entry_id)
        report.delivered += 1
        return
    attempts = _times_delivered(client, stream, entry_id)
    if attempts >= rt.settings.webhook_max_attempts:
        client.xadd(
            keys.WEBHOOK_DEAD, {"event": raw, "error": error, "attempts": attempts, "url_host": httpx.URL(url).host}
        )
        client.xack(stream, keys.WEBHOOK_GROUP, entry_id)
        log.error("webhook gave up on an event", event_id=event.get("id"), error=error, attempts=attempts)
        report.dead += 1
    else:
        log.warning("webhook delivery failed, will retry", event_id=event.get("id"), error=error, attempts=attempts)
        report.failed += 1


def _times_delivered(client: redis.Redis, stream: str, entry_id: str) -> int:
    pending = cast(
        list[dict[str, Any]], client.xpending_range(stream, keys.WEBHOOK_GROUP, min=entry_id, max=entry_id, count=1)
    )
    return int(pending[0]["times_delivered"]) if pending else 1
