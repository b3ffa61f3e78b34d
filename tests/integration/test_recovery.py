"""Recovery with real Celery workers: a SIGKILLed worker's jobs are picked up by the others within 30 s, and no
slot is held beyond its limit meanwhile. Checked from the outside: job store, events, simulator counters.

A Redis restart and an S3 outage are exercised together with SIGKILLs and a hostile service by the chaos
suite (`test_chaos.py`, `ops/chaos/`)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from ops.chaos import hooks
from ops.localstack import LocalStack
from producer.csv_source import CsvRow
from tests.conftest import raw_redis
from tests.stage_runner import batch_done, publish_rows, wait_until
from workers.job import Status
from workers.jobstore import JobStore
from workers.quota.quota import Quota, Scope

pytestmark = pytest.mark.integration
MODEL = "wan2.5-t2i-preview"  # the default model: 5 tasks at once, plus a queue of 5 upstream


@pytest.fixture
def stack(local_stack_factory: Callable[..., LocalStack]) -> LocalStack:
    return local_stack_factory(workers=2, simulator_profile="demo", worker_concurrency=3)


def enqueue(stack: LocalStack, count: int) -> JobStore:
    rows = [CsvRow(i + 2, {"id": f"j{i}", "prompt": f"prompt {i}", "seed": str(i)}) for i in range(count)]
    store, report = publish_rows(stack, "b", rows)
    assert report.accepted == count
    return store


def assert_all_succeeded_once(stack: LocalStack, store: JobStore, count: int) -> None:
    summary = store.batch_summary("b")
    assert summary is not None and summary.counts == {"succeeded": count}
    events = [json.loads(f["event"]) for _, f in raw_redis(stack.settings).xrange(stack.settings.event_stream)]
    job_events = [e["subject"] for e in events if e["type"].startswith("genq.job.")]
    assert sorted(job_events) == sorted(f"b/j{i}" for i in range(count))  # exactly one each
    counters = stack.simulator_counters()
    assert counters is not None and counters["counters"]["creates"] == count and counters["duplicate_creates"] == 0


def test_sigkilled_worker_jobs_are_polled_again_within_30_s(stack: LocalStack) -> None:
    """SIGKILL one of two workers while jobs are being polled and hold slots: every unfinished job is polled
    again within 30 s by the surviving worker, every job still ends succeeded exactly once with one upstream
    task each, no more jobs than the scope's slots ever hold one, the service never runs more than its
    limit, and every slot comes back."""
    store = enqueue(stack, 12)
    quota, scope = Quota.redis(raw_redis(stack.settings)), Scope("default", MODEL)
    limit = stack.settings.limits("default", MODEL)
    held: list[int] = []

    def sampled(condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            held.append(len(quota.slot_holders(scope, time.time())))
            return condition()

        return check

    polling = [Status.SUBMITTED, Status.RUNNING]
    wait_until(sampled(lambda: sum(j.status in polling for j in store.jobs("b")) >= 4), 60, "jobs being polled")
    assert held[-1] >= 4  # the jobs about to lose their worker hold slots

    victim = stack.process("worker-local1")
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    before = {j.ref: j.attempt for j in store.jobs("b") if not j.terminal}
    assert before

    def all_moved_on() -> bool:
        now = {j.ref: j for j in store.jobs("b")}
        return all(now[ref].terminal or now[ref].attempt > attempt for ref, attempt in before.items())

    wait_until(sampled(all_moved_on), 30, "every unfinished job to be looked after again")
    assert time.monotonic() - killed_at < 30
    wait_until(sampled(batch_done(store, "b")), 120, "the batch to finish")
    assert_all_succeeded_once(stack, store, 12)
    assert max(held) <= limit.slot_limit
    assert quota.slot_holders(scope, time.time()) == []
    upstream = stack.simulator_counters()
    assert upstream is not None
    assert all(s["max_running"] <= limit.max_concurrent for s in upstream["scopes"])


def test_beat_takes_its_lock_again_at_once_after_a_redis_restart(
    local_stack_factory: Callable[..., LocalStack],
) -> None:
    """Redis restarts and its AOF brings back beat's redbeat lock, still held: `genq beat` gives that lock back
    as soon as Redis answers, so the restarted scheduler (and with it the recovery sweep) runs again within
    seconds instead of waiting out the lock's 30 s."""
    stack = local_stack_factory(workers=1)
    beat_log = stack.process("beat").log_path
    wait_until(lambda: "Acquired lock" in beat_log.read_text(), 30, "beat to take its lock")
    hooks.restart_redis(stack, down_s=6)  # longer than a beat tick (5 s), so beat does meet the outage
    restarted = time.monotonic()
    wait_until(lambda: beat_log.read_text().count("Acquired lock") >= 2, 25, "beat to take its lock again")
    assert time.monotonic() - restarted < 15
    assert "gave back the lock" in beat_log.read_text()
