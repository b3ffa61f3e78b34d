"""The request stream with real consumers and workers: every valid request ends with one result event, every
invalid one with one rejected event, through a consumer that died between reading and answering and one
killed with SIGKILL; nothing is processed twice."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.catalogue import shipped_catalogue
from config.settings import Settings
from ops.localstack import LocalStack
from ops.localstack.process import ManagedProcess
from ops.localstack.stack import child_env
from producer.batch import new_job
from producer.stream import MAX_DELIVERIES, RequestConsumer
from tests.conftest import raw_redis
from tests.stage_runner import wait_until
from workers import refs
from workers.jobstore import JobStore, keys
from workers.requests import ENVELOPE_FIELDS, validate_envelope
from workers.runtime import Runtime, make_inbox, make_quota, make_store

SHIPPED = shipped_catalogue()

pytestmark = pytest.mark.integration
MODEL = "wan2.5-t2i-preview"

INVALID = [
    {"request_id": "bad-n", "prompt": "too many", "n": 9},
    {"request_id": "bad-model", "prompt": "x", "model": "dall-e-3"},
    {"prompt": "no request id"},
    "not an object",
]


def consumer_of(store: JobStore, settings: Settings, name: str, *, block_ms: int) -> RequestConsumer:
    """A consumer of the settings' request stream (its group made), as `genq consume` builds one; it sends
    nothing (the tests look at what was admitted, not at Celery)."""
    consumer = RequestConsumer(
        store,
        settings,
        lambda step: None,
        inbox=make_inbox(settings),
        quota=make_quota(settings),
        consumer=name,
        block_ms=block_ms,
    )
    consumer.ensure_group()
    return consumer


def publish(client: redis.Redis, stream: str, request: Any) -> None:
    body = request if isinstance(request, str) and not request.startswith("{") else json.dumps(request)
    client.xadd(stream, {"request": body})


def consumer(stack: LocalStack, name: str) -> ManagedProcess:
    """`genq consume` in a process of its own, as a deployment runs it."""
    return ManagedProcess(
        f"consumer-{name}",
        [str(Path(sys.executable).parent / "genq"), "consume", "--name", name],
        log_path=stack.log_dir / f"consumer-{name}.log",
        env=child_env(stack.settings),
    )


def events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields["event"]) for _, fields in client.xrange(stream)]


def test_requests_survive_dead_consumers_and_each_gets_one_answer(
    local_stack_factory: Callable[..., LocalStack],
) -> None:
    """12 valid requests (one sent twice) and 4 invalid ones, read by a consumer that dies before answering,
    one SIGKILLed while consuming, and a third that takes over: 12 jobs succeed with one event each, 4
    rejected events name their reasons, the simulator saw 12 creates, and nothing is left pending."""
    stack = local_stack_factory(workers=1, simulator_profile="fast", request_claim_idle_s=2.0)
    settings, store = stack.settings, make_store(stack.settings)
    client, stream, group = raw_redis(settings), settings.request_stream, settings.request_group
    client.xgroup_create(stream, group, id="0", mkstream=True)

    valid = [{"request_id": f"r{i}", "prompt": f"stream prompt {i}", "metadata": {"origin": "t"}} for i in range(12)]
    for request in valid[:4] + INVALID[:2]:
        publish(client, stream, request)
    # Consumer "ghost" reads these six and dies before answering any of them.
    assert len(client.xreadgroup(group, "ghost", {stream: ">"}, count=10)[0][1]) == 6

    first = consumer(stack, "first")
    for request in [*valid[4:8], valid[0]]:  # r0 again: the same request id must not make a second job
        publish(client, stream, request)
    wait_until(lambda: (s := store.batch_summary("requests")) is not None and s.total >= 4, 60, "the first to read")
    os.killpg(first.pid, signal.SIGKILL)
    first.stop()
    for request in [*valid[8:], *INVALID[2:]]:
        publish(client, stream, request)

    second = consumer(stack, "second")
    try:

        def all_answered() -> bool:
            summary = store.batch_summary("requests")
            rejected = [e for e in events(client, settings.event_stream) if e["type"] == "genq.request.rejected"]
            return summary is not None and summary.terminal >= 12 and len(rejected) >= 4

        wait_until(all_answered, 90, "every request to be answered")
    finally:
        second.stop()

    summary = store.batch_summary("requests")
    assert summary is not None and summary.total == 12 and summary.counts == {"succeeded": 12}
    seen = events(client, settings.event_stream)
    job_events = Counter(e["subject"] for e in seen if e["type"].startswith("genq.job."))
    assert job_events == Counter({f"requests/r{i}": 1 for i in range(12)})
    rejected = [e["data"] for e in seen if e["type"] == "genq.request.rejected"]
    assert sorted((r["request_id"] or "-", r["field"]) for r in rejected) == [
        ("-", "request"),
        ("-", "request_id"),
        ("bad-model", "model"),
        ("bad-n", "n"),
    ]
    assert all(r["reason"] for r in rejected)
    upstream = stack.simulator_counters()
    assert upstream is not None and upstream["counters"]["creates"] == 12 and upstream["duplicate_creates"] == 0
    assert client.xpending(stream, group)["pending"] == 0


def test_consumer_holds_back_while_too_many_jobs_wait_for_quota(runtime: Runtime) -> None:
    """With 5 jobs allowed to wait, a consumer that has 20 requests' jobs waiting or running reads no more: new
    requests stay unread in the stream (nothing pending, nothing lost) until the waiting line is short again."""
    settings = runtime.settings.model_copy(update={"request_max_waiting": 5})
    consumer = consumer_of(runtime.store, settings, "c", block_ms=50)
    client, stream = raw_redis(runtime.settings), settings.request_stream
    for i in range(20):
        publish(client, stream, {"request_id": f"r{i}", "prompt": f"p {i}"})
    first = consumer.step()
    assert first.accepted == 20 and runtime.store.waiting([MODEL]) == {MODEL: 10}  # 10 hold slots, 10 wait
    for i in range(20, 23):
        publish(client, stream, {"request_id": f"r{i}", "prompt": f"p {i}"})
    held = consumer.step()
    assert held.held_back and held.read == 0
    assert client.xpending(stream, settings.request_group)["pending"] == 0
    assert client.xinfo_groups(stream)[0]["lag"] == 3  # the three new requests wait, unread, in the stream
    client.delete(keys.wait_queue(MODEL))  # the line is short again (as if the quota had admitted them)
    resumed = consumer.step()
    assert not resumed.held_back and resumed.accepted == 3


def hostile_entries(count: int) -> list[dict[str, str]]:
    """Stream entries nobody scripted: wrong JSON types, huge values, missing fields, non-JSON, deep nesting,
    lone surrogates, unknown keys, an entry without its `request` field. Each must be answered by a rejection."""
    bodies = [
        '{"request_id": "h-%d", "prompt": "x", "n": 1.5}',
        '{"request_id": "h-%d", "prompt": 42}',
        '{"request_id": "h-%d", "prompt": "x", "model": 7}',
        '{"request_id": "h-%d", "prompt": "x", "size": 1280}',
        '{"request_id": "h-%d", "prompt": "x", "prompt_extend": 1}',
        '{"request_id": "h-%d", "prompt": "x", "n": ' + "9" * 5000 + "}",
        '{"request_id": "h-%d", "prompt": "' + "p" * 70_000 + '"}',
        '{"request_id": "h-%d", "prompt": "x", "metadata": {"k": [1, 2]}}',
        '{"request_id": "h-%d", "prompt": "x", "priority": "high"}',
        '{"request_id": "h-%d\\n", "prompt": "x"}',
        '{"request_id": "h-%d", "prompt": "a\\ud800b"}',
        '{"request_id": "h-%d", "promt": "typo"}',
        '{"request_id": "h-%d"}',
        '{"request_id": "h-%d", "prompt": "x", "size": "١٢٨٠*١٢٨٠"}',
        "not json at all %d",
        "[%d]",
        "[" * 30_000 + "%d",
    ]
    entries = []
    for i in range(count):
        body = bodies[i % len(bodies)]
        entries.append({"request": body.replace("%d", str(i))} if "%d" in body else {"request": body})
    entries.append({"not-request": "an entry without the request field"})
    return entries


def test_a_thousand_hostile_and_valid_entries_each_get_one_answer_while_a_consumer_is_killed(
    local_stack_factory: Callable[..., LocalStack],
) -> None:
    """1,000 entries (120 valid requests over two models, 30 redeliveries of them, 10 request ids reused with
    other content, 840 hostile ones) read by two `genq consume` processes, one SIGKILLed half-way: every entry
    is answered once (a job, or one rejection event naming a field and a reason), nothing is pending, and each
    job was created once upstream and succeeded."""
    stack = local_stack_factory(workers=1, simulator_profile="fast", request_claim_idle_s=2.0)
    settings, store = stack.settings, make_store(stack.settings)
    client, stream, group = raw_redis(settings), settings.request_stream, settings.request_group
    client.xgroup_create(stream, group, id="0", mkstream=True)

    models = ("wan2.5-t2i-preview", "wan2.6-t2i")
    valid = [{"request_id": f"v{i}", "prompt": f"valid {i}", "model": models[i % 2], "n": 1} for i in range(120)]
    reused = [{**valid[i], "prompt": f"other content {i}"} for i in range(10)]
    entries = [{"request": json.dumps(r)} for r in valid]
    entries += [{"request": json.dumps(valid[i])} for i in range(30)]  # the same request again: the same job
    entries += [{"request": json.dumps(r)} for r in reused]
    entries += hostile_entries(1000 - len(entries) - 1)
    assert len(entries) == 1000
    order = list(range(len(entries)))
    __import__("random").Random(7).shuffle(order)

    first, second = consumer(stack, "first"), consumer(stack, "second")
    ids: list[str] = []
    try:
        for n, index in enumerate(order):
            ids.append(client.xadd(stream, entries[index]))
            if n == 500:
                wait_until(lambda: (s := store.batch_summary("requests")) is not None and s.total >= 20, 60, "reading")
                os.killpg(first.pid, signal.SIGKILL)
        first.stop()

        def rejected_entries() -> Counter[str]:
            seen = events(client, settings.event_stream)
            return Counter(e["data"]["stream_entry"] for e in seen if e["type"] == "genq.request.rejected")

        def answered() -> bool:
            summary = store.batch_summary("requests")
            pending = client.xpending(stream, group)["pending"]
            # A stream's batch is never sealed (more requests may come): every job ended is what "done" means here.
            return pending == 0 and summary is not None and summary.terminal == summary.total >= 120

        wait_until(answered, 240, "every entry to be answered and every job to end")
    finally:
        first.stop()
        second.stop()

    entry_of = dict(zip(ids, (entries[i] for i in order), strict=True))
    rejected = rejected_entries()
    assert max(rejected.values()) == 1, "an entry was answered twice"
    seen = events(client, settings.event_stream)
    assert all(e["data"]["field"] and e["data"]["reason"] for e in seen if e["type"] == "genq.request.rejected")
    jobs = {job.job_id: job for job in store.jobs("requests")}
    for entry_id, fields in entry_of.items():
        body = fields.get("request", "")
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            request = None
        as_job = isinstance(request, dict) and request.get("request_id") in jobs
        same = as_job and jobs[request["request_id"]].request.prompt == request.get("prompt")
        assert (entry_id in rejected) != bool(same), f"entry {entry_id} has no single answer: {body[:80]}"
    # A reused id's entries whose content is not its job's were each rejected as naming another request.
    reuse = [e["data"] for e in seen if e["type"] == "genq.request.rejected" and e["data"]["field"] == "request_id"]
    assert len([r for r in reuse if "another request" in r["reason"]]) >= 10
    assert len(jobs) == 120 and all(job.status.value == "succeeded" for job in jobs.values())
    upstream = stack.simulator_counters()
    assert upstream is not None and upstream["counters"]["creates"] == 120 and upstream["duplicate_creates"] == 0
    assert client.xpending(stream, group)["pending"] == 0


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
nested = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=8), scalars, max_size=3)
json_values = nested | st.lists(nested, max_size=3) | st.dictionaries(st.text(max_size=8), nested, max_size=3)
request_objects = st.fixed_dictionaries(
    {"request_id": st.sampled_from(["a1", "a2", "a3", "x\n", ""]) | json_values},
    optional={
        name: json_values | st.sampled_from(["1", "2", "1280*1280", "true"])
        for name in ENVELOPE_FIELDS
        if name != "request_id"
    },
)
entry_bodies = (
    request_objects.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(entry_bodies | st.just(None), min_size=1, max_size=6))
def test_any_entries_on_the_stream_are_each_answered_once(redis_url: str, bodies: list[str | None]) -> None:
    """Arbitrary entries (any JSON, any text, lone surrogates, no `request` field) read by a real consumer on
    a real Redis: one round answers each with a job or a rejection marker, acknowledges all, and raises nothing."""
    settings_ = Settings(redis_url=redis_url)
    store = make_store(settings_)
    consumer = consumer_of(store, settings_, "fuzz", block_ms=10)
    client = raw_redis(settings_)
    ids = []
    for body in bodies:
        fields = {"other": "x"} if body is None else {"request": body.encode("utf-8", "surrogatepass")}
        ids.append(client.xadd(settings_.request_stream, fields))
    report = consumer.step()
    assert report.read == len(bodies)
    assert report.accepted + report.known + report.rejected == len(bodies)
    assert client.xpending(settings_.request_stream, settings_.request_group)["pending"] == 0
    rejected = [entry for entry in ids if client.exists(keys.request_answered(entry))]
    assert len(rejected) == report.rejected


def test_a_resend_with_its_metadata_in_another_order_is_the_same_request(runtime: Runtime) -> None:
    """A request sent again under its id, the same in every value but with its metadata's keys in another order,
    is known (the job it made answers it), not rejected as another request; different content is rejected."""
    consumer = consumer_of(runtime.store, runtime.settings, "c", block_ms=10)
    client, stream = raw_redis(runtime.settings), runtime.settings.request_stream
    publish(client, stream, {"request_id": "r", "prompt": "a cat", "metadata": {"a": "1", "b": "2"}})
    assert consumer.step().accepted == 1
    publish(client, stream, {"request_id": "r", "prompt": "a cat", "metadata": {"b": "2", "a": "1"}})
    again = consumer.step()
    assert (again.known, again.rejected) == (1, 0)
    publish(client, stream, {"request_id": "r", "prompt": "a dog", "metadata": {"a": "1", "b": "2"}})
    assert consumer.step().rejected == 1


def test_an_entry_that_keeps_failing_is_dead_lettered_alone(runtime: Runtime) -> None:
    """Four requests of one read whose consumers kept dying: the one delivered more than 5 times is answered
    with InternalError, kept in the dead-letter stream and acknowledged; one delivered as often that had
    already become a job is acknowledged with no rejection; the two others of the read become jobs as usual."""
    settings_ = runtime.settings.model_copy(update={"request_claim_idle_s": 0.0})
    store, client = runtime.store, raw_redis(runtime.settings)
    stream, group = settings_.request_stream, settings_.request_group
    consumer = consumer_of(store, settings_, "c", block_ms=10)
    bodies = [{"request_id": f"r{i}", "prompt": f"p{i}"} for i in range(4)]
    ids = [client.xadd(stream, {"request": json.dumps(body)}) for body in bodies]
    assert len(client.xreadgroup(group, "ghost", {stream: ">"}, count=10)[0][1]) == 4  # read, never answered
    for _ in range(MAX_DELIVERIES):  # r1 and r3 were taken over, and took their consumer down, five more times
        client.xclaim(stream, group, "ghost", 0, [ids[1], ids[3]])
    envelope = validate_envelope(bodies[3], catalogue=SHIPPED, default_batch="requests", default_model=MODEL)
    store.open_batch("requests", source="test")
    store.create_jobs([new_job(refs.job_ref("requests", "r3"), 0, envelope.request)])  # it died after this

    report = consumer.step()
    assert report.reclaimed == 4 and report.accepted == 2
    assert client.xpending(stream, group)["pending"] == 0
    assert sorted(j.job_id for j in store.jobs("requests")) == ["r0", "r2", "r3"]
    rejected = [e["data"] for e in events(client, settings_.event_stream) if e["type"] == "genq.request.rejected"]
    assert [(r["stream_entry"], r["request_id"], r["field"]) for r in rejected] == [(ids[1], "r1", "request")]
    assert rejected[0]["reason"].startswith("InternalError: handling this entry failed 5 times")
    dead = client.xrange(keys.REQUESTS_DEAD)
    assert [(fields["entry"], json.loads(fields["field:request"])) for _, fields in dead] == [(ids[1], bodies[1])]
