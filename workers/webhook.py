"""The webhook sink, a lane of its own: events POSTed to a URL, signed per Standard Webhooks, retried for hours,
dead-lettered with a reason when they cannot be delivered.

Two tasks, two queues (config/celery_app.py):

- `genq.webhook_tick` (queue `events`, beat every 2 s): `tick` copies new events of `genq:events` into the
  outbox (workers/jobstore/webhook_outbox.py: Redis only, no network, so the stage workers that run it never wait on a
  receiver) and, when an event is due and fewer than `MAX_QUEUED` delivery messages wait, sends one
  `genq.deliver_webhooks`.
- `genq.deliver_webhooks` (queue `webhooks`, served by its own worker processes: `genq worker --queues
  webhooks`): `deliver_due` POSTs due events for up to `ROUND_BUDGET_S`, `webhook_concurrency` at a time.

A slow, failing or black-holed receiver therefore ties up only the webhook workers. Within a round, one event
per URL goes first; if it fails, the round's other events for that URL are not sent and count the same failure
(one probe per endpoint and round during an outage, not one timeout per event).

The target is the batch's own webhook (`genq batch --webhook URL`) if it has one, else `GENQ_WEBHOOK_URL`.
Headers and signatures: workers/webhook_signing.py. A 2xx answer is a delivery. Anything else is a failure,
tried again after `retry_delay_s` (exponential from `webhook_retry_first_s`, doubling up to
`webhook_retry_cap_s`, with up to 20 % jitter; a `Retry-After` in seconds is honoured up to the cap), until
the event has waited `webhook_give_up_s` (24 h) or had `webhook_max_attempts` tries; then it is dead-lettered
with its last error. `410 Gone` is dead-lettered at once: the receiver asked for no more.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from config.settings import Settings
from workers.jobstore.webhook_outbox import ClaimedEvent, CollectReport, Outbox
from workers.runtime import Runtime
from workers.webhook_signing import delivery_headers

__all__ = ["DeliveryReport", "deliver_due", "deliver_pending", "deliver_round", "tick"]

log = structlog.get_logger("genq.webhook")

#: Delivery messages allowed to wait in the `webhooks` queue: enough to keep its workers busy, and no pile-up
#: in Redis (noeviction) when no worker serves the queue.
MAX_QUEUED = 2
#: How long one `genq.deliver_webhooks` task keeps taking due events before it hands back its process.
ROUND_BUDGET_S = 20.0
#: Events claimed per round.
ROUND_COUNT = 100


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0  # will be tried again
    dead: int = 0
    skipped: int = 0  # no target any more

    def add(self, other: DeliveryReport) -> None:
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.skipped += other.skipped


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def retry_delay_s(settings: Settings, attempts: int, jitter: float = 0.0) -> float:
    """The wait after the `attempts`-th failed try: doubling from the first delay up to the cap, stretched by
    `jitter` (0 to 1) times 20 %, never past the cap."""
    base = settings.webhook_retry_first_s * 2.0 ** min(max(attempts - 1, 0), 60)
    return min(settings.webhook_retry_cap_s, base * (1.0 + 0.2 * jitter))


def lease_s(settings: Settings) -> float:
    """How long a claimed event is left to its try before another may take it: every phase of the request
    (connect, write, read, pool) timing out in turn, and a margin."""
    return 4 * settings.webhook_timeout_s + 30.0


def _outbox(rt: Runtime) -> Outbox:
    if rt.outbox is None:
        raise RuntimeError("this runtime has no webhook outbox (build it with workers.runtime.build_runtime)")
    return rt.outbox


def tick(rt: Runtime, send_delivery: Callable[[], None], queued: Callable[[], int]) -> CollectReport:
    """Beat's webhook step, on the `events` queue: collect new events; set delivery going when one is due."""
    outbox = _outbox(rt)
    now = rt.clock()
    report = outbox.collect(now=now, consumer=consumer_name())
    if outbox.has_due(now) and queued() < MAX_QUEUED:
        send_delivery()
    return report


def deliver_due(rt: Runtime, http: httpx.Client, *, budget_s: float = ROUND_BUDGET_S) -> DeliveryReport:
    """The `genq.deliver_webhooks` task's work: rounds of due events until none is due or the budget is spent."""
    total = DeliveryReport()
    ends_at = time.monotonic() + budget_s
    while time.monotonic() < ends_at:
        report = deliver_round(rt, http, now=rt.clock())
        total.add(report)
        if report.delivered + report.failed + report.dead + report.skipped == 0:
            break
    return total


def deliver_pending(rt: Runtime, http: httpx.Client, *, now: float) -> DeliveryReport:
    """Collect, then one round of delivery at time `now` (tests and one-off use)."""
    _outbox(rt).collect(now=now, consumer=consumer_name())
    return deliver_round(rt, http, now=now)


def deliver_round(rt: Runtime, http: httpx.Client, *, now: float, count: int = ROUND_COUNT) -> DeliveryReport:
    """Claim up to `count` due events and try each once (one probe per URL first; see the module docstring)."""
    settings = rt.settings
    outbox = _outbox(rt)
    report = DeliveryReport()
    claimed = outbox.claim(now=now, lease_s=lease_s(settings), count=count)
    by_url: dict[str, list[ClaimedEvent]] = {}
    known: dict[str, str | None] = {}
    for item in claimed:
        url = outbox.target(_parsed(item), known)
        if url is None:
            outbox.delivered(item.entry)  # nothing to send it to any more (the webhook was unset)
            report.skipped += 1
        else:
            by_url.setdefault(url, []).append(item)
    if not by_url:
        return report
    if not settings.webhook_keys:
        _warn_unsigned_once()

    def send(url: str, item: ClaimedEvent) -> tuple[ClaimedEvent, str, _Outcome]:
        try:
            return item, url, _post(http, settings, url, item, rt.clock())
        except Exception as exc:  # one try's surprise must not stop the round: it is recorded as a failed try
            log.exception("webhook delivery failed unexpectedly", entry=item.entry)
            return item, url, _Outcome(f"{type(exc).__name__}: {exc}"[:200])

    with ThreadPoolExecutor(max_workers=min(settings.webhook_concurrency, len(claimed))) as pool:
        probes = [pool.submit(send, url, items[0]) for url, items in by_url.items()]
        rest = []
        for probe in as_completed(probes):  # a healthy URL's other events need not wait for a slow one's probe
            item, url, outcome = probe.result()
            _record(outbox, settings, item, url, outcome, report, now=now, jitter=rt.rng.random())
            others = by_url[url][1:]
            if outcome.error is None:
                rest += [pool.submit(send, url, other) for other in others]
            else:
                skipped = _Outcome(f"{outcome.error} (not sent: this URL failed earlier in the round)")
                for other in others:
                    _record(outbox, settings, other, url, skipped, report, now=now, jitter=rt.rng.random())
        for future in rest:
            _record(outbox, settings, *future.result(), report, now=now, jitter=rt.rng.random())
    return report


@dataclass(frozen=True)
class _Outcome:
    error: str | None  # None: delivered
    permanent: bool = False
    retry_after_s: float | None = None


def _parsed(item: ClaimedEvent) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(item.event)  # checked at collection: a JSON object with an id
    return parsed


def _post(http: httpx.Client, settings: Settings, url: str, item: ClaimedEvent, now: float) -> _Outcome:
    body = item.event.encode()
    headers = delivery_headers(settings, item.event_id, body, now)
    try:
        response = http.post(url, content=body, headers=headers, timeout=settings.webhook_timeout_s)
    except httpx.TimeoutException as exc:
        return _Outcome(f"timeout ({type(exc).__name__})")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _Outcome(type(exc).__name__)
    if response.is_success:
        return _Outcome(None)
    if response.status_code == 410:
        return _Outcome("HTTP 410 Gone: the receiver wants no more deliveries", permanent=True)
    return _Outcome(f"HTTP {response.status_code}", retry_after_s=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """The receiver's `Retry-After` in seconds, when it is a plain ASCII number (an HTTP date is ignored)."""
    value = response.headers.get("retry-after", "").strip()
    if not (value.isascii() and value.isdigit()):  # '²'.isdigit() is True, float('²') is not a number
        return None
    return float(value)


def _record(
    outbox: Outbox,
    settings: Settings,
    item: ClaimedEvent,
    url: str,
    outcome: _Outcome,
    report: DeliveryReport,
    *,
    now: float,
    jitter: float,
) -> None:
    """Write down one try's outcome: delivered, tried again later, or dead-lettered."""
    if outcome.error is None:
        outbox.delivered(item.entry)
        report.delivered += 1
        return
    delay = retry_delay_s(settings, item.attempts, jitter)
    if outcome.retry_after_s is not None:
        delay = min(settings.webhook_retry_cap_s, max(delay, outcome.retry_after_s))
    out_of_tries = settings.webhook_max_attempts is not None and item.attempts >= settings.webhook_max_attempts
    out_of_time = now + delay - item.first_at > settings.webhook_give_up_s
    context = {"entry": item.entry, "event_id": item.event_id, "error": outcome.error, "attempts": item.attempts}
    if outcome.permanent or out_of_tries or out_of_time:
        waited_h = (now - item.first_at) / 3600
        reason = (
            outcome.error
            if outcome.permanent
            else f"gave up after {item.attempts} tries over {waited_h:.1f} h: {outcome.error}"
        )
        if outbox.dead(item, reason=reason, error=outcome.error, url_host=_host(url)):
            report.dead += 1
            log.error("webhook gave up on an event", reason=reason, **context)
        return
    outbox.retry(item.entry, at=now + delay, error=outcome.error)
    report.failed += 1
    log.warning("webhook delivery failed, will retry", retry_in_s=round(delay, 1), **context)


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or "?"
    except httpx.InvalidURL:
        return "?"


_warned_unsigned: list[bool] = []


def _warn_unsigned_once() -> None:
    if not _warned_unsigned:
        _warned_unsigned.append(True)
        log.warning("webhook deliveries go out UNSIGNED: set GENQ_WEBHOOK_SECRET")
