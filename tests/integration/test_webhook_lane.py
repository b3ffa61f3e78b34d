"""Webhook delivery as its own lane: deliveries verify with the `standardwebhooks` package (also during a key
rotation), every event is delivered or dead-lettered with its reason however the event stream is trimmed, a
malformed entry is dead-lettered without stopping delivery, and real workers deliver on the `webhooks` queue.

The receiver is a real HTTP server on 127.0.0.1 that checks every request with the reference verifier of the
Standard Webhooks specification, not with genq's code."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ops.localstack import LocalStack
from ops.webhook_receiver import VerifyingReceiver
from producer.csv_source import CsvRow
from tests.conftest import raw_redis
from tests.stage_runner import batch_done, enqueue, publish_rows, run, wait_until
from workers.jobstore import keys
from workers.jobstore.webhook_outbox import Outbox
from workers.runtime import Runtime
from workers.webhook import deliver_pending, deliver_round

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[dict[str, Webhook]], VerifyingReceiver]]:
    started: list[VerifyingReceiver] = []

    def start(verifiers: dict[str, Webhook]) -> VerifyingReceiver:
        started.append(VerifyingReceiver(verifiers).__enter__())
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def whsec() -> str:
    """A secret in the specification's form: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def stream_entries(rt: Runtime) -> dict[str, str]:
    """entry id -> event id of what `genq:events` holds now."""
    return {entry: json.loads(f["event"])["id"] for entry, f in raw_redis(rt.settings).xrange(rt.settings.event_stream)}


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(keys.WEBHOOK_DEAD)]


def rows(count: int, prefix: str) -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "prompt": f"a lighthouse, take {i}"} for i in range(count)]


def test_a_standard_webhooks_receiver_accepts_every_delivery_during_a_key_rotation(
    runtime_factory: Callable[..., Runtime], receiver_factory: Callable[[dict[str, Webhook]], VerifyingReceiver]
) -> None:
    """Given a new key in the whsec_ form and the retiring one as a raw string (its UTF-8 bytes are the key),
    every delivery carries two v1 signatures, and the reference verifier accepts each delivery with either key
    alone; with a key of neither, it refuses them (so the check can fail)."""
    new, old = whsec(), "raw-retiring-secret-" + secrets.token_hex(8)
    hook = receiver_factory({"new key": Webhook(new), "retiring raw key": Webhook(old.encode())})
    rt = runtime_factory(webhook_url=hook.url, webhook_secret=SecretStr(new), webhook_secret_previous=SecretStr(old))
    run(rt, enqueue(rt, *rows(3, "j")), timeout_s=30)
    expected = sorted(stream_entries(rt).values())
    with httpx.Client() as http:
        report = deliver_pending(rt, http, now=time.time())
    assert report.delivered == len(expected) == 4  # 3 jobs and the batch
    assert hook.refused == [] and sorted(hook.accepted_ids()) == expected
    for headers, body in hook.seen:
        assert [s.split(",")[0] for s in headers["webhook-signature"].split(" ")] == ["v1", "v1"]
        with pytest.raises(WebhookVerificationError):
            Webhook(whsec()).verify(body, headers)


def test_every_event_is_delivered_or_dead_lettered_when_the_stream_is_trimmed_during_an_outage(
    runtime_factory: Callable[..., Runtime], receiver_factory: Callable[[dict[str, Webhook]], VerifyingReceiver]
) -> None:
    """During a webhook outage: a first batch's events wait in the outbox until they are given up; a collector
    dies holding a second batch's first entries; the lane is down while a third batch ends; then `genq:events`
    is trimmed to 10 entries. Once the receiver is back, every entry the stream ever held is either accepted by
    the verifying receiver or in the dead-letter stream with its reason (given up; trimmed while pending, by
    entry; trimmed unread, as a counted range), never both, and nothing is left waiting."""
    secret = whsec()
    hook = receiver_factory({"key": Webhook(secret)})
    rt = runtime_factory(
        webhook_url=hook.url, webhook_secret=SecretStr(secret), webhook_give_up_s=3600.0, webhook_retry_cap_s=600.0
    )
    outbox = Outbox(raw_redis(rt.settings), rt.settings, stale_pending_ms=200)
    hook.status = 503
    t0 = time.time()
    run(rt, enqueue(rt, *rows(6, "a"), batch_id="b1"), timeout_s=30)
    with httpx.Client() as http:
        assert outbox.collect(now=t0, consumer="c").copied == 7
        assert deliver_round(rt, http, now=t0).failed == 7

        run(rt, enqueue(rt, *rows(6, "b"), batch_id="b2"), timeout_s=30)
        raw_redis(rt.settings).xreadgroup(keys.WEBHOOK_GROUP, "crashed", {rt.settings.event_stream: ">"}, count=3)
        run(rt, enqueue(rt, *rows(12, "c"), batch_id="b3"), timeout_s=60)
        ever = stream_entries(rt)  # the oracle: every entry, before the trim
        assert len(ever) == 7 + 7 + 13
        raw_redis(rt.settings).xtrim(rt.settings.event_stream, maxlen=10, approximate=False)
        time.sleep(0.3)  # the dead collector's entries are now stale

        t1 = t0 + 2000
        collected = outbox.collect(now=t1, consumer="c")
        assert (collected.copied, collected.dead, collected.trimmed_unread) == (10, 3, 7)
        for now in range(int(t1), int(t0) + 4000, 300):  # the outage goes on: b1's events are given up
            deliver_round(rt, http, now=now)
        hook.status = None
        now = t0 + 4000
        while outbox.waiting():
            deliver_round(rt, http, now=now)
            now += 600
            assert now < t0 + 20_000, "events still waiting long after the receiver came back"

    delivered = set(hook.accepted_ids())
    dead = dead_letters(raw_redis(rt.settings))
    assert hook.refused == [] and all(d["reason"] for d in dead)
    by_entry = {d["entry"]: d for d in dead if "entry" in d}
    gaps = [d for d in dead if "missing" in d]
    assert len(gaps) == 1 and gaps[0]["reason"] == "trimmed before delivery"

    def in_gap(entry: str) -> bool:
        def key(text: str) -> tuple[int, ...]:
            return tuple(int(part) for part in text.split("-"))

        return key(gaps[0]["after"]) < key(entry) < key(gaps[0]["before"])

    unaccounted, both = [], []
    for entry, event_id in ever.items():
        outcomes = [event_id in delivered, entry in by_entry, in_gap(entry)]
        if sum(outcomes) == 0:
            unaccounted.append(event_id)
        if sum(outcomes) > 1:
            both.append(event_id)
    assert unaccounted == [] and both == []
    assert int(gaps[0]["missing"]) == sum(in_gap(entry) for entry in ever) == 7
    reasons = sorted(d["reason"].split(" after ")[0] for d in by_entry.values())
    assert reasons == ["gave up"] * 7 + ["trimmed before delivery"] * 3
    assert (
        len(delivered) == 10
        and raw_redis(rt.settings).xpending(rt.settings.event_stream, keys.WEBHOOK_GROUP)["pending"] == 0
    )


def test_a_malformed_entry_is_dead_lettered_and_delivery_goes_on(
    runtime_factory: Callable[..., Runtime], receiver_factory: Callable[[dict[str, Webhook]], VerifyingReceiver]
) -> None:
    """Entries that are not events (no `event` field, not JSON, not an object with an id, bytes that are not
    UTF-8), appended between real events, are each dead-lettered with what is wrong; the events around them are
    delivered, in the same collection and in the next one."""
    secret = whsec()
    hook = receiver_factory({"key": Webhook(secret)})
    rt = runtime_factory(webhook_url=hook.url, webhook_secret=SecretStr(secret))
    stream = rt.settings.event_stream
    run(rt, enqueue(rt, *rows(2, "a"), batch_id="before"), timeout_s=30)
    raw = raw_redis(rt.settings)
    bad = {
        raw.xadd(stream, {"payload": "{}"}): "malformed: no event field",
        raw.xadd(stream, {"event": "{not json"}): "malformed: not JSON",
        raw.xadd(stream, {"event": "[1, 2]"}): "malformed: not a CloudEvent with an id",
        raw.xadd(stream, {"event": '{"type": "x"}'}): "malformed: not a CloudEvent with an id",
    }
    undecodable = Outbox(raw, rt.settings).reader  # writes raw bytes as they are
    bad[str(undecodable.xadd(stream, {"event": b'{"id": "\xff"}'}))] = "malformed: not UTF-8"
    run(rt, enqueue(rt, *rows(2, "b"), batch_id="after"), timeout_s=30)
    with httpx.Client() as http:
        first = deliver_pending(rt, http, now=time.time())
        run(rt, enqueue(rt, *rows(1, "c"), batch_id="later"), timeout_s=30)
        second = deliver_pending(rt, http, now=time.time())
    letters = dead_letters(undecodable)
    assert {d["entry"]: d["reason"] for d in letters} == bad
    kept = [d["event"] for d in letters if d["reason"] == "malformed: not UTF-8"]
    assert [text.encode(errors="surrogateescape") for text in kept] == [b'{"id": "\xff"}']  # byte for byte
    assert (first.delivered, second.delivered, hook.refused) == (6, 2, [])
    assert {e["subject"].split("/")[0] for e in hook.accepted} == {"before", "after", "later"}
    assert raw.xpending(stream, keys.WEBHOOK_GROUP)["pending"] == 0


def test_webhook_delivery_runs_on_its_own_workers(
    local_stack_factory: Callable[..., LocalStack],
    receiver_factory: Callable[[dict[str, Webhook]], VerifyingReceiver],
) -> None:
    """Through the local stack's real processes (beat, a stage worker, the webhook worker): every event of a batch
    reaches a verifying receiver, delivered by `genq.deliver_webhooks` tasks that only the webhook worker ran."""
    secret = whsec()
    hook = receiver_factory({"key": Webhook(secret)})
    stack = local_stack_factory(
        workers=1, simulator_profile="fast", webhook_url=hook.url, webhook_secret=SecretStr(secret)
    )
    store, report = publish_rows(stack, "lane", [CsvRow(i + 2, r) for i, r in enumerate(rows(5, "j"))])
    assert report.accepted == 5
    wait_until(batch_done(store, "lane"), 90, "the batch to finish")
    wait_until(lambda: len(hook.accepted) >= 6, 60, "six deliveries (five jobs and the batch)")
    events = [json.loads(f["event"])["id"] for _, f in raw_redis(stack.settings).xrange(stack.settings.event_stream)]
    assert sorted(hook.accepted_ids()) == sorted(events) and hook.refused == []
    logs = {p.name: p.log_path.read_text() for p in stack.started if p.name in ("worker-local1", "webhook-worker")}
    ran = {name: set(re.findall(r"Task (genq\.[a-z_]+)\[", log)) for name, log in logs.items()}
    assert ran["webhook-worker"] == {"genq.deliver_webhooks"}
    assert "genq.webhook_tick" in ran["worker-local1"] and "genq.deliver_webhooks" not in ran["worker-local1"]
