"""The job store's promises (`workers/jobstore/protocol.py`), one body per promise, run against the Redis and the
in-memory implementation. The Lua scripts of `workers/jobstore/lua/` are the reference: where the two stores
disagree, the memory store is the one to fix.

Events are read as a consumer reads them: for Redis, with XRANGE on an independent client; for the memory store,
with its `events()`. Every test uses fresh batch ids, model names and event stream, so no two tests share a job,
batch, queue or stream key; the fleet-wide keys (counts, tasks upstream, paused accounts) are clean because the
`redis_url` fixture flushes the server before each test (and the property test before each example).
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.billing import Bill, utc_day
from workers.events import iso_time
from workers.job import PER_TRY, REVIVABLE, TERMINAL, TRANSITIONS, Action, Job, Status, record_of
from workers.jobstore import Applied, JobStore, MemoryJobStore, NewJob, Purged, RedisJobStore
from workers.refs import job_ref
from workers.requests import GenerationRequest
from workers.retention import purge_finished

NOW = 1_700_000_000.0
BAND = 1e12
DAY = 86400.0

#: A way from `accepted` to each status along the transition table (each step allowed from the one before).
PATHS: dict[Status, list[Status]] = {
    Status.ACCEPTED: [],
    Status.ADMITTED: [Status.ADMITTED],
    Status.SUBMITTING: [Status.ADMITTED, Status.SUBMITTING],
    Status.SUBMITTED: [Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED],
    Status.RUNNING: [Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.RUNNING],
    Status.OVERDUE: [Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.OVERDUE],
    Status.DOWNLOADING: [Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.DOWNLOADING],
    Status.SUCCEEDED: [Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.DOWNLOADING, Status.SUCCEEDED],
    Status.PARTIALLY_SUCCEEDED: [
        Status.ADMITTED,
        Status.SUBMITTING,
        Status.SUBMITTED,
        Status.DOWNLOADING,
        Status.PARTIALLY_SUCCEEDED,
    ],
    Status.FAILED: [Status.FAILED],
    Status.CANCELED: [Status.CANCELED],
    Status.TIMED_OUT: [Status.TIMED_OUT],
    Status.EXPIRED: [Status.ADMITTED, Status.SUBMITTING, Status.SUBMITTED, Status.EXPIRED],
}


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    if request.param == "memory":
        yield MemoryJobStore()
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    yield RedisJobStore(client, event_stream="genq:events:" + secrets.token_hex(4))
    client.close()


@pytest.fixture
def events(store: JobStore, request: pytest.FixtureRequest) -> Callable[[], list[dict[str, Any]]]:
    """The store's events as a consumer of its stream reads them, decoded, oldest first."""
    if isinstance(store, MemoryJobStore):
        return store.events
    observer = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    request.addfinalizer(observer.close)
    return lambda: redis_events(observer, store.event_stream)


def redis_events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream))
    return [json.loads(fields["event"]) for _, fields in entries]


@pytest.fixture
def model() -> str:
    return "m-" + secrets.token_hex(4)


def new_id() -> str:
    return "b" + secrets.token_hex(4)


def new_job(ref: str, line: int, model: str, now: float = NOW) -> NewJob:
    return NewJob(ref, line, model, record_of(ref, line, GenerationRequest(model=model, prompt=f"line {line}"), now))


def batch_of(store: JobStore, model: str, n: int, *, priority: int = 5, seal: bool = False) -> tuple[str, list[str]]:
    """A new batch of `n` jobs (ids j0.., lines 1..) waiting for `model`; its id and the jobs' refs."""
    batch_id = new_id()
    store.open_batch(batch_id, source="test.csv", priority=priority, now=NOW)
    job_refs = [job_ref(batch_id, f"j{i}") for i in range(n)]
    assert store.create_jobs([new_job(ref, i + 1, model) for i, ref in enumerate(job_refs)]) == [None] * n
    if seal:
        store.seal_batch(batch_id, now=NOW)
    return batch_id, job_refs


def walk(store: JobStore, ref: str, status: Status, now: float = NOW) -> Job:
    """Move a job from `accepted` to `status` along `PATHS`; the job as it is then."""
    for step in PATHS[status]:
        assert store.transition(ref, step, expected_attempt=None, now=now).ok
    job = store.get(ref)
    assert job is not None and job.status is status
    return job


def drain(store: JobStore, model: str) -> list[tuple[str, float]]:
    """Admit every waiting job of `model` in turn, as admission does; (ref, score) in the order served."""
    served = []
    while (first := store.next_waiting(model)) is not None:
        assert store.leave_queue(model, first[0])
        store.advance_clock(model, first[1])
        served.append(first)
    return served


def defaults() -> dict[str, Any]:
    return {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(Job)
    }


# --- creating jobs and batches ----------------------------------------------------------------------
def test_create_is_idempotent_and_reports_the_existing_status(store: JobStore, model: str) -> None:
    """Creating a job again keeps the first one untouched and answers its status; the batch counts it once."""
    batch_id, (a, b) = batch_of(store, model, 2)
    assert store.claim(a, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + 60).ok
    c = job_ref(batch_id, "j2")
    assert store.create_jobs([new_job(a, 1, model), new_job(b, 2, model), new_job(c, 3, model)]) == [
        Status.ADMITTED,
        Status.ACCEPTED,
        None,
    ]
    job = store.get(a)
    assert job is not None and job.attempt == 1 and job.next_action is Action.SUBMIT
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.total == 3 and summary.counts == {"accepted": 2, "admitted": 1}


def test_a_job_reads_back_as_it_was_created(store: JobStore, model: str) -> None:
    """`get` gives the record `record_of` wrote as a `Job`, and None for a job that does not exist."""
    batch_id, (ref,) = batch_of(store, model, 1)
    job = store.get(ref)
    assert job is not None
    assert (job.batch_id, job.job_id, job.line, job.model, job.status, job.attempt) == (
        batch_id,
        "j0",
        1,
        model,
        Status.ACCEPTED,
        0,
    )
    assert job.request == GenerationRequest(model=model, prompt="line 1")
    assert job.next_action is Action.ADMIT and job.due_at == 0.0 and job.times == {"accepted": NOW}
    assert store.get(job_ref(batch_id, "nobody")) is None


def test_jobs_come_in_source_order(store: JobStore, model: str) -> None:
    """`jobs` yields a batch's jobs by source line, whatever order they were created in."""
    batch_id = new_id()
    store.open_batch(batch_id, source="s", now=NOW)
    lines = {"x": 30, "y": 10, "z": 20}
    store.create_jobs([new_job(job_ref(batch_id, j), line, model) for j, line in lines.items()])
    assert [(j.job_id, j.line) for j in store.jobs(batch_id)] == [("y", 10), ("z", 20), ("x", 30)]
    assert list(store.jobs(new_id())) == []


def test_open_batch_creates_once_and_reopens(store: JobStore) -> None:
    """Opening a batch is new once; opening it again keeps its creation time, unseals it and takes the new
    source; batches are listed oldest first; a priority outside 0-9 is refused."""
    first, second = new_id(), new_id()
    assert store.open_batch(second, source="a.csv", now=NOW + 10)
    assert store.open_batch(first, source="b.csv", now=NOW)
    assert store.seal_batch(first, now=NOW + 1)  # nothing in it: sealing finishes it
    assert not store.open_batch(first, source="c.csv", now=NOW + 20)
    summary = store.batch_summary(first)
    assert summary is not None
    assert (summary.created_at, summary.sealed, summary.source, summary.total) == (NOW, False, "c.csv", 0)
    assert [b for b in store.batch_ids() if b in (first, second)] == [first, second]
    with pytest.raises(ValueError, match="priority must be 0-9"):
        store.open_batch(new_id(), source="s", priority=10)
    assert store.batch_summary(new_id()) is None


def test_record_rejected_is_idempotent_per_line_and_sorted(store: JobStore) -> None:
    """A rejected line recorded twice counts once (the last record kept); the records come in line order."""
    batch_id = new_id()
    store.open_batch(batch_id, source="s", now=NOW)
    store.record_rejected(batch_id, 7, "size", "not a size", {"size": "huge"})
    store.record_rejected(batch_id, 3, "prompt", "empty", {"prompt": ""})
    store.record_rejected(batch_id, 7, "size", "too large", {"size": "9999*9999"})
    assert store.rejected(batch_id) == [
        {"line": 3, "field": "prompt", "reason": "empty", "input": {"prompt": ""}},
        {"line": 7, "field": "size", "reason": "too large", "input": {"size": "9999*9999"}},
    ]
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.rejected == 2
    assert store.rejected(new_id()) == []


def test_batch_webhook_is_set_and_read(store: JobStore) -> None:
    """A batch has no webhook of its own until one is set, then answers that URL."""
    batch_id = new_id()
    store.open_batch(batch_id, source="s", now=NOW)
    assert store.batch_webhook(batch_id) is None
    store.set_batch_webhook(batch_id, "https://example.test/hook")
    assert store.batch_webhook(batch_id) == "https://example.test/hook"


def test_sample_jobs_draws_distinct_jobs_of_the_batch(store: JobStore, model: str) -> None:
    """A sample holds up to `count` distinct jobs of the batch, all of it when `count` exceeds its size."""
    batch_id, job_refs = batch_of(store, model, 5)
    sample = store.sample_jobs(batch_id, 3)
    assert len(sample) == 3 and len({j.ref for j in sample}) == 3 and {j.ref for j in sample} <= set(job_refs)
    assert sorted(j.ref for j in store.sample_jobs(batch_id, 10)) == job_refs
    assert store.sample_jobs(batch_id, 0) == []
    assert store.sample_jobs(new_id(), 3) == []


# --- the wait queues ----------------------------------------------------------------------------------
def test_wait_queue_serves_the_higher_priority_band_first(store: JobStore, model: str) -> None:
    """A job of a priority-8 batch goes before the jobs of an earlier priority-2 batch; the score is
    band * 1e12 + position, with band 9 - priority."""
    _, low = batch_of(store, model, 2, priority=2)
    _, high = batch_of(store, model, 1, priority=8)
    assert store.waiting([model, "m-nobody"]) == {model: 3}
    assert drain(store, model) == [(high[0], 1 * BAND + 1), (low[0], 7 * BAND + 1), (low[1], 7 * BAND + 2)]
    assert store.next_waiting(model) is None and store.waiting([model]) == {}


def test_batches_of_one_band_take_turns(store: JobStore, model: str) -> None:
    """Two batches queued at the same turn are served alternately, each in its own source order, not one
    batch after the other."""
    _, a = batch_of(store, model, 3)
    _, b = batch_of(store, model, 3)
    served = drain(store, model)
    assert [score for _, score in served] == [4 * BAND + p for p in (1, 1, 2, 2, 3, 3)]
    for turn in range(3):
        assert {ref for ref, _ in served[2 * turn : 2 * turn + 2]} == {a[turn], b[turn]}


def test_a_batch_queued_later_starts_at_the_current_turn(store: JobStore, model: str) -> None:
    """A batch that joins once two turns were served counts on from the queue's clock, so it takes turns with
    the jobs still waiting instead of going ahead of them or waiting behind all of them."""
    _, a = batch_of(store, model, 4)
    assert [ref for ref, _ in drain_some(store, model, 2)] == a[:2]
    _, b = batch_of(store, model, 2)
    served = drain(store, model)
    assert [score for _, score in served] == [4 * BAND + p for p in (3, 3, 4, 4)]
    assert {ref for ref, _ in served[:2]} == {a[2], b[0]} and {ref for ref, _ in served[2:]} == {a[3], b[1]}
    _, late = batch_of(store, model, 1)
    assert store.next_waiting(model) == (late[0], 4 * BAND + 5)


def test_a_job_added_to_a_batch_behind_the_clock_waits_at_the_current_turn(store: JobStore, model: str) -> None:
    """A job added to a batch whose own count of turns fell behind the queue's clock takes the current turn, not
    a past one: it cannot go ahead of the turns still to be served."""
    a_id, _ = batch_of(store, model, 1)
    batch_of(store, model, 3)
    assert [score for _, score in drain(store, model)] == [4 * BAND + p for p in (1, 1, 2, 3)]
    late = job_ref(a_id, "late")
    store.create_jobs([new_job(late, 2, model)])
    assert store.next_waiting(model) == (late, 4 * BAND + 3)
    store.create_jobs([new_job(job_ref(a_id, "later"), 3, model)])
    assert drain(store, model) == [(late, 4 * BAND + 3), (job_ref(a_id, "later"), 4 * BAND + 3)]


def drain_some(store: JobStore, model: str, n: int) -> list[tuple[str, float]]:
    served = []
    for _ in range(n):
        first = store.next_waiting(model)
        assert first is not None and store.leave_queue(model, first[0])
        store.advance_clock(model, first[1])
        served.append(first)
    return served


def test_requeue_puts_a_job_back_at_its_band_current_turn(store: JobStore, model: str) -> None:
    """A job requeued after the clock reached turn 1 waits at turn 1 of its band, ahead of later turns;
    requeueing a job already in line changes nothing and answers False."""
    _, job_refs = batch_of(store, model, 3, priority=7)
    (first, score), *_ = drain_some(store, model, 1)
    assert score == 2 * BAND + 1
    assert store.requeue(first, model)
    assert store.next_waiting(model) == (first, 2 * BAND + 1)
    assert not store.requeue(first, model)
    assert not store.requeue(job_refs[2], model)
    assert store.waiting([model]) == {model: 3}


def test_a_held_job_leaves_its_queue_and_comes_back_to_its_place(store: JobStore, model: str) -> None:
    """Holding a batch's jobs (its budget cap) takes them out of their queue, so the next batch's job is first
    in line; unholding puts them back at the places they had, first held first, `limit` at a time; holding a
    job not in the queue does nothing."""
    capped, (a, b) = batch_of(store, model, 2, priority=6)  # a higher band: first in line
    _, (other,) = batch_of(store, model, 1)
    first = store.next_waiting(model)
    assert first is not None and first[0] == a
    assert store.hold(model, a) and store.hold(model, b) and not store.hold(model, a)
    behind = store.next_waiting(model)
    assert store.held(capped) == 2 and behind is not None and behind[0] == other
    assert store.unhold(capped, limit=1) == 1 and store.held(capped) == 1
    assert store.next_waiting(model) == first  # back at its own place, before the other batch's job
    assert store.unhold(capped) == 1 and store.unhold(capped) == 0
    assert store.hold(model, b) and store.leave_queue(model, b) and store.held(capped) == 0  # cancelled while held
    assert store.unhold(capped) == 0 and store.requeue(b, model)
    served = drain(store, model)
    assert {ref for ref, _ in served} == {a, b, other} and first in served and behind in served


def test_advance_clock_only_moves_forward(store: JobStore, model: str) -> None:
    """The clock takes the admitted job's position (its score modulo 1e12, whatever its band) and never goes
    back; a new batch counts on from it and a requeued job waits at it."""
    store.advance_clock(model, 3 * BAND + 7)
    store.advance_clock(model, 1 * BAND + 4)
    _, (ref,) = batch_of(store, model, 1)
    assert store.next_waiting(model) == (ref, 4 * BAND + 8)
    assert store.leave_queue(model, ref)
    assert not store.leave_queue(model, ref)
    assert store.requeue(ref, model)
    assert store.next_waiting(model) == (ref, 4 * BAND + 7)


# --- transitions -------------------------------------------------------------------------------------
def test_transition_refuses_an_attempt_that_moved_on(store: JobStore, model: str) -> None:
    """Once a claim advanced the attempt, a move expecting the old attempt is refused and changes nothing."""
    _, (ref,) = batch_of(store, model, 1)
    assert store.claim(ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + 60).ok
    refused = store.transition(ref, Status.SUBMITTING, expected_attempt=0, fields={"account": "x"})
    assert refused == Applied(ok=False, status="admitted", attempt=1, reason="attempt moved on")
    job = store.get(ref)
    assert job is not None and (job.status, job.account, job.due_at) == (Status.ADMITTED, None, NOW + 60)


def test_transition_of_a_job_that_does_not_exist(store: JobStore) -> None:
    """A move of a missing job is refused as such, and creates nothing."""
    ref = job_ref(new_id(), "j0")
    assert store.transition(ref, Status.FAILED, expected_attempt=None) == Applied(
        ok=False, status="", attempt=0, reason="no such job"
    )
    assert store.get(ref) is None and store.due(math.inf) == []


def test_transition_refuses_a_move_the_table_forbids(store: JobStore, model: str) -> None:
    """A succeeded job cannot run again, an accepted one cannot jump to succeeded, and a transition cannot
    revive a failed job: each refused with the reason naming both statuses, leaving the job as it was."""
    _, (done, fresh, failed) = batch_of(store, model, 3)
    ended = walk(store, done, Status.SUCCEEDED)
    assert store.transition(done, Status.RUNNING, expected_attempt=None) == Applied(
        ok=False, status="succeeded", attempt=ended.attempt, reason="succeeded cannot move to running"
    )
    assert store.transition(fresh, Status.SUCCEEDED, expected_attempt=0).reason == ("accepted cannot move to succeeded")
    walk(store, failed, Status.FAILED)
    assert store.transition(failed, Status.ACCEPTED, expected_attempt=None).reason == "failed cannot move to accepted"
    assert store.get(done) == ended


def test_staying_in_a_status_reschedules_without_an_event(
    store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]
) -> None:
    """A move to the status the job is in applies (a reschedule): new due time and fields, no event, no change
    of counters or of when it entered the status."""
    batch_id, (ref,) = batch_of(store, model, 1)
    walk(store, ref, Status.SUBMITTED, now=NOW + 1)
    applied = store.transition(
        ref, Status.SUBMITTED, expected_attempt=0, next_action=Action.POLL, due_at=NOW + 30, event={"id": "x"}
    )
    assert applied == Applied(ok=True, status="submitted", attempt=0)
    job = store.get(ref)
    assert job is not None and job.next_action is Action.POLL and job.due_at == NOW + 30
    assert job.times["submitted"] == NOW + 1
    assert events() == []
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.counts == {"submitted": 1}


def test_claim_advances_the_attempt_and_sets_the_due_time(store: JobStore, model: str) -> None:
    """A claim bumps the attempt, records the action and fields, and indexes the job due at its lease."""
    _, (ref,) = batch_of(store, model, 1)
    applied = store.claim(
        ref,
        Status.ADMITTED,
        expected_attempt=0,
        action=Action.SUBMIT,
        lease_until=NOW + 60,
        fields={"account": "acct-1"},
        now=NOW + 2,
    )
    assert applied == Applied(ok=True, status="admitted", attempt=1)
    job = store.get(ref)
    assert job is not None
    assert (job.attempt, job.next_action, job.due_at, job.account) == (1, Action.SUBMIT, NOW + 60, "acct-1")
    assert job.times["admitted"] == NOW + 2
    assert store.due(NOW + 59) == [] and store.due(NOW + 60) == [(ref, NOW + 60)]
    again = store.claim(ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + 90)
    assert again == Applied(ok=False, status="admitted", attempt=1, reason="attempt moved on")


def test_concurrent_claims_of_one_attempt_let_exactly_one_win(store: JobStore, model: str) -> None:
    """Eight threads claiming the same attempt of a job at once: one claim applies, seven find it moved on."""
    _, (ref,) = batch_of(store, model, 1)
    start = threading.Barrier(8)

    def claim(account: str) -> Applied:
        start.wait()
        return store.claim(
            ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW, fields={"account": account}
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(claim, [f"acct-{i}" for i in range(8)]))
    winners = [i for i, applied in enumerate(answers) if applied.ok]
    assert len(winners) == 1
    assert all(a.reason == "attempt moved on" for a in answers if not a.ok)
    job = store.get(ref)
    assert job is not None and (job.attempt, job.account) == (1, f"acct-{winners[0]}")


def test_due_lists_the_oldest_first_up_to_the_limit(store: JobStore, model: str) -> None:
    """`due` answers the jobs due at or before `now`, earliest first, at most `limit` of them."""
    _, job_refs = batch_of(store, model, 3)
    for ref, at in zip(job_refs, (30, 10, 20), strict=True):
        store.claim(ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + at)
    assert store.due(NOW + 20) == [(job_refs[1], NOW + 10), (job_refs[2], NOW + 20)]
    assert store.due(NOW + 100, limit=1) == [(job_refs[1], NOW + 10)]


def test_a_terminal_transition_ends_the_job_once(
    store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]
) -> None:
    """Ending a job takes it out of the due index, clears its next action, counts it terminal and appends its
    event exactly once; a repeat of the same end is refused and appends nothing."""
    batch_id, (ref, _) = batch_of(store, model, 2)
    store.claim(ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + 60)
    event = {"id": f"{ref}/failed/1", "type": "genq.job.failed", "data": {"ref": ref}}
    applied = store.transition(
        ref,
        Status.FAILED,
        expected_attempt=1,
        next_action=Action.SUBMIT,
        due_at=NOW + 90,
        fields={"error_code": "Boom"},
        event=event,
        now=NOW + 3,
    )
    assert applied == Applied(ok=True, status="failed", attempt=1)
    assert store.transition(ref, Status.FAILED, expected_attempt=1, event=event).reason == (
        "failed cannot move to failed"
    )
    job = store.get(ref)
    assert job is not None
    assert (job.due_at, job.next_action, job.error_code, job.times["failed"]) == (0.0, Action.NONE, "Boom", NOW + 3)
    assert store.due(math.inf) == []
    assert events() == [event]
    summary = store.batch_summary(batch_id)
    assert summary is not None and (summary.terminal, summary.counts) == (1, {"accepted": 1, "failed": 1})
    assert summary.done_at is None  # not sealed, and a job still open


def test_the_last_end_finishes_a_sealed_batch_with_one_event(
    store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]
) -> None:
    """When the last job of a sealed batch ends, that transition reports the batch finished, stamps it done and
    appends one `genq.batch.finished` event with the batch's counts; sealing it again finishes nothing."""
    batch_id, (a, b) = batch_of(store, model, 2, seal=True)
    store.record_rejected(batch_id, 9, "prompt", "empty", {})
    assert not store.transition(a, Status.CANCELED, expected_attempt=None, now=NOW + 4).batch_finished
    walk(store, b, Status.DOWNLOADING)
    last = store.transition(b, Status.SUCCEEDED, expected_attempt=None, now=NOW + 5.25)
    assert last.ok and last.batch_finished
    assert events() == [
        {
            "specversion": "1.0",
            "id": f"batch/{batch_id}/finished/{NOW + 5.25!r}",
            "source": "genq",
            "type": "genq.batch.finished",
            "subject": batch_id,
            "time": iso_time(NOW + 5.25),
            "datacontenttype": "application/json",
            "data": {
                "batch_id": batch_id,
                "total": 2,
                "rejected": 1,
                "counts": {"canceled": 1, "succeeded": 1},
                "billed": {},
            },
        }
    ]
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.done and summary.done_at == NOW + 5.25 and summary.succeeded == 1
    assert not store.seal_batch(batch_id, now=NOW + 6)
    assert len(events()) == 1


def test_a_bill_counts_once_per_task_on_the_job_its_batch_and_its_day(
    store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]
) -> None:
    """A transition carrying a bill adds its units to the job, the batch (per model) and the UTC day (per account
    and model) in the same step; the same task's bill again adds nothing; a refused transition adds nothing; a
    second task of the job (a retry) adds to it; the batch's finished event carries its billed units."""
    batch_id, (a, b) = batch_of(store, model, 2, seal=True)
    day = utc_day(NOW)
    walk(store, a, Status.SUBMITTED)
    bill = Bill(2, "task-1", "acct", model, NOW)
    assert store.transition(a, Status.DOWNLOADING, expected_attempt=None, bill=bill, now=NOW).ok
    assert store.transition(a, Status.DOWNLOADING, expected_attempt=None, bill=bill, now=NOW).ok  # again: same task
    stale = store.transition(b, Status.ADMITTED, expected_attempt=99, bill=Bill(4, "task-9", "acct", model, NOW))
    assert not stale.ok
    job = store.get(a)
    assert job is not None and job.billed_units == 2 and job.billed_origin == "task-1"
    assert store.transition(a, Status.DOWNLOADING, expected_attempt=None, bill=Bill(0.5, "task-2", "acct", model, NOW))
    job = store.get(a)
    assert job is not None and job.billed_units == 2.5
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.billed == {model: 2.5}
    assert store.billed(day) == {("acct", model): 2.5} and store.billed("2000-01-01") == {}
    assert store.transition(a, Status.SUCCEEDED, expected_attempt=None, now=NOW + 1).ok
    assert store.transition(b, Status.CANCELED, expected_attempt=None, now=NOW + 2).batch_finished
    assert events()[-1]["data"]["billed"] == {model: 2.5}


def test_sealing_a_batch_whose_jobs_all_ended_finishes_it(
    store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]
) -> None:
    """A batch whose jobs all ended before it was sealed is finished by the seal (one event), and only once;
    an empty batch is finished by its seal too."""
    batch_id, (ref,) = batch_of(store, model, 1)
    assert not store.transition(ref, Status.TIMED_OUT, expected_attempt=None).batch_finished
    assert events() == []
    assert store.seal_batch(batch_id, now=NOW + 7)
    assert not store.seal_batch(batch_id, now=NOW + 8)
    empty = new_id()
    store.open_batch(empty, source="s", now=NOW)
    assert store.seal_batch(empty, now=NOW + 9)
    found = events()
    assert [(e["subject"], e["data"]["total"], e["data"]["counts"]) for e in found] == [
        (batch_id, 1, {"timed_out": 1}),
        (empty, 0, {}),
    ]
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.done_at == NOW + 7


def test_a_new_job_reopens_a_finished_batch(store: JobStore, model: str) -> None:
    """A job created in a finished batch clears its done stamp: the batch has a job to wait for again."""
    batch_id, (ref,) = batch_of(store, model, 1, seal=True)
    assert store.transition(ref, Status.FAILED, expected_attempt=None).batch_finished
    store.open_batch(batch_id, source="more.csv", now=NOW)
    store.create_jobs([new_job(job_ref(batch_id, "late"), 2, model)])
    summary = store.batch_summary(batch_id)
    assert summary is not None and (summary.total, summary.terminal, summary.done_at) == (2, 1, None)


# --- revival -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", list(PATHS), ids=str)
def test_revive_only_from_a_revivable_end(store: JobStore, model: str, status: Status) -> None:
    """Only a failed, timed-out or expired job can be revived; any other is refused with the table's reason."""
    _, (ref,) = batch_of(store, model, 1)
    job = walk(store, ref, status)
    store.leave_queue(model, ref)
    applied = store.revive(job, now=NOW + 1)
    if status in REVIVABLE:
        assert applied == Applied(ok=True, status="accepted", attempt=job.attempt + 1)
        assert store.waiting([model]) == {model: 1}
    else:
        assert applied == Applied(
            ok=False, status=status.value, attempt=job.attempt, reason=f"{status} cannot move to accepted"
        )
        assert store.get(ref) == job and store.next_waiting(model) is None


def test_revive_resets_the_try_and_puts_the_job_back_in_line(store: JobStore, model: str) -> None:
    """A revived job has every per-try field at its default, one more retry, its other fields kept, a new
    attempt, no due time, and waits in its model's queue at the current turn."""
    _, (ref,) = batch_of(store, model, 1, priority=9)
    drain(store, model)
    walk(store, ref, Status.SUBMITTED)
    assert store.claim(
        ref,
        Status.SUBMITTED,
        expected_attempt=0,
        action=Action.POLL,
        lease_until=NOW + 60,
        fields={"account": "acct-1", "task_id": "t-1", "submits": 2, "create_pending": True, "poll_errors": 3},
    ).ok
    store.count_crash(ref)
    assert store.transition(
        ref,
        Status.FAILED,
        expected_attempt=1,
        fields={"error_code": "E", "error_message": "m", "results": [{"url": "u"}], "at_risk": True},
    ).ok
    ended = store.get(ref)
    assert ended is not None and ended.stage_crashes == 1 and ended.task_id == "t-1"
    assert store.revive(ended, now=NOW + 10).ok
    job = store.get(ref)
    assert job is not None
    expected = defaults()
    assert {name: getattr(job, name) for name in PER_TRY} == {name: expected[name] for name in PER_TRY}
    assert (job.status, job.attempt, job.retries, job.account, job.next_action) == (
        Status.ACCEPTED,
        2,
        1,
        "acct-1",
        Action.ADMIT,
    )
    assert job.due_at == 0.0 and store.due(math.inf) == [] and job.times["accepted"] == NOW + 10
    assert store.next_waiting(model) == (ref, 0 * BAND + 1)
    assert store.transition(ref, Status.FAILED, expected_attempt=None).ok
    twice = store.get(ref)
    assert twice is not None and store.revive(twice).ok
    again = store.get(ref)
    assert again is not None and again.retries == 2


def test_revive_unfinishes_the_batch(store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]) -> None:
    """Reviving the job of a finished batch takes one off its terminal count and clears its done stamp; the
    batch finishes again (with a new event) when the job ends again."""
    batch_id, (ref,) = batch_of(store, model, 1, seal=True)
    assert store.transition(ref, Status.FAILED, expected_attempt=None, now=NOW + 1).batch_finished
    job = store.get(ref)
    assert job is not None and store.revive(job, now=NOW + 2).ok
    summary = store.batch_summary(batch_id)
    assert summary is not None
    assert (summary.terminal, summary.done_at, summary.done, summary.counts) == (0, None, False, {"accepted": 1})
    assert store.transition(ref, Status.CANCELED, expected_attempt=None, now=NOW + 3).batch_finished
    assert [(e["id"], e["data"]["counts"]) for e in events()] == [
        (f"batch/{batch_id}/finished/{NOW + 1!r}", {"failed": 1}),
        (f"batch/{batch_id}/finished/{NOW + 3!r}", {"canceled": 1}),
    ]


def test_revive_refuses_a_stale_attempt(store: JobStore, model: str) -> None:
    """Two revivals of the same read of a job: the second finds the attempt moved on and does nothing."""
    batch_id, (ref,) = batch_of(store, model, 1)
    drain(store, model)
    job = walk(store, ref, Status.EXPIRED)
    assert store.revive(job).ok
    assert store.revive(job) == Applied(ok=False, status="accepted", attempt=job.attempt + 1, reason="attempt moved on")
    revived = store.get(ref)
    assert revived is not None and revived.retries == 1
    assert store.waiting([model]) == {model: 1}
    summary = store.batch_summary(batch_id)
    assert summary is not None and summary.terminal == 0


# --- the due index -------------------------------------------------------------------------------------
def test_push_due_moves_only_later_and_only_indexed_jobs(store: JobStore, model: str) -> None:
    """`push_due` moves an indexed job's due time later, on the job and in the index; an earlier time, a job
    not indexed, or one dropped from the index is left alone."""
    _, (ref, waiting) = batch_of(store, model, 2)
    store.claim(ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + 60)
    assert not store.push_due(ref, NOW + 30)
    assert not store.push_due(ref, NOW + 60)
    assert store.push_due(ref, NOW + 90.5)
    job = store.get(ref)
    assert job is not None and job.due_at == NOW + 90.5
    assert store.due(math.inf) == [(ref, NOW + 90.5)]
    assert not store.push_due(waiting, NOW + 90)
    untouched = store.get(waiting)
    assert untouched is not None and untouched.due_at == 0.0
    store.drop_due(ref)
    assert not store.push_due(ref, NOW + 200)
    assert store.due(math.inf) == []


def test_drop_due_takes_a_job_out_of_the_index(store: JobStore, model: str) -> None:
    """After `drop_due` the sweep no longer finds the job; dropping it again, or an unknown ref, is harmless."""
    _, (a, b) = batch_of(store, model, 2)
    for ref in (a, b):
        store.claim(ref, Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW + 60)
    store.drop_due(a)
    store.drop_due(a)
    store.drop_due(job_ref(new_id(), "x"))
    assert store.due(math.inf) == [(b, NOW + 60)]


# --- crashes, accounts, events ---------------------------------------------------------------------------
def test_count_crash_counts_on_the_job(store: JobStore, model: str) -> None:
    """Each crash of a stage adds one to the job's count and answers it; an unknown job answers 0."""
    _, (ref,) = batch_of(store, model, 1)
    assert [store.count_crash(ref) for _ in range(2)] == [1, 2]
    job = store.get(ref)
    assert job is not None and job.stage_crashes == 2
    unknown = job_ref(new_id(), "x")
    assert store.count_crash(unknown) == 0 and store.get(unknown) is None


def test_pause_account_once_with_one_event(store: JobStore, events: Callable[[], list[dict[str, Any]]]) -> None:
    """Pausing an account records it and appends its event; pausing it again answers False, keeps the first
    record and appends nothing."""
    record = {"code": "Arrearage", "message": "pay up", "at": NOW}
    event = {"id": "account/acct-1/paused", "type": "genq.account.paused", "data": {"account": "acct-1"}}
    assert store.pause_account("acct-1", record, event)
    assert not store.pause_account("acct-1", {**record, "code": "Other"}, {**event, "id": "again"})
    assert store.paused_accounts() == {"acct-1": record}
    assert events() == [event]
    assert store.gauges().paused == ["acct-1"]


def test_resume_account_lifts_the_pause(store: JobStore) -> None:
    """Resuming a paused account answers True and removes it; resuming it again answers False."""
    store.pause_account("acct-2", {"code": "c", "message": "m", "at": NOW}, {"id": "e"})
    store.pause_account("acct-1", {"code": "c", "message": "m", "at": NOW}, {"id": "f"})
    assert store.gauges().paused == ["acct-1", "acct-2"]
    assert store.resume_account("acct-2")
    assert not store.resume_account("acct-2")
    assert list(store.paused_accounts()) == ["acct-1"]


def test_emit_event_appends_in_order(store: JobStore, events: Callable[[], list[dict[str, Any]]]) -> None:
    """Events emitted without a change of status are appended as given, in order, non-ASCII text intact."""
    store.emit_event({"id": "1", "type": "genq.job.at_risk", "data": {"note": "café"}})
    store.emit_event({"id": "2", "type": "genq.request.answered"})
    assert events() == [
        {"id": "1", "type": "genq.job.at_risk", "data": {"note": "café"}},
        {"id": "2", "type": "genq.request.answered"},
    ]


def test_read_events_pages_through_the_stream_after_an_entry(store: JobStore, request: pytest.FixtureRequest) -> None:
    """Events are read back oldest first, `limit` entries at a time, each page after the last entry of the one
    before; an entry genq did not write (no JSON event) is skipped, not an error, and a page of nothing else still
    moves the cursor on."""
    for i in range(4):
        store.emit_event({"id": str(i)})
    if isinstance(store, RedisJobStore):  # a foreign entry, written by someone else on the same stream
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
        client.xadd(store.event_stream, {"other": "x"})
        client.xadd(store.event_stream, {"event": "not json"})
        client.close()
    store.emit_event({"id": "4"})
    store.emit_event({"id": "5"})
    seen, after, pages = [], "0", 0
    while True:
        events, cursor = store.read_events(after, limit=2)
        if cursor == after:
            break
        seen += [e["id"] for e in events]
        after, pages = cursor, pages + 1
    assert seen == ["0", "1", "2", "3", "4", "5"]
    assert pages == (4 if isinstance(store, RedisJobStore) else 3)  # the two foreign entries fill the third
    assert store.read_events(after) == ([], after)


def test_gauges_count_jobs_per_status_and_tasks_upstream_per_model(store: JobStore, model: str) -> None:
    """Jobs per status over every batch (a status that emptied reads 0) and tasks submitted, running or overdue
    per model, kept by every transition."""
    other = model + "-b"
    _, (s, r, d) = batch_of(store, model, 3)
    _, (o,) = batch_of(store, other, 1)
    walk(store, s, Status.SUBMITTED)
    walk(store, r, Status.RUNNING)
    walk(store, d, Status.DOWNLOADING)
    walk(store, o, Status.OVERDUE)
    gauges = store.gauges()
    assert {k: v for k, v in gauges.jobs.items() if v} == {"submitted": 1, "running": 1, "downloading": 1, "overdue": 1}
    assert gauges.jobs["accepted"] == 0 and gauges.jobs["admitted"] == 0 and gauges.jobs["submitting"] == 0
    assert gauges.upstream == {model: 2, other: 1}
    assert store.transition(r, Status.DOWNLOADING, expected_attempt=None).ok
    assert store.transition(o, Status.EXPIRED, expected_attempt=None).ok
    assert store.transition(s, Status.SUBMITTING, expected_attempt=None).ok  # a resubmission: not upstream
    gauges = store.gauges()
    assert gauges.upstream == {model: 0, other: 0}
    assert {k: v for k, v in gauges.jobs.items() if v} == {"submitting": 1, "downloading": 2, "expired": 1}
    assert gauges.paused == []


# --- creates in flight and task owners ---------------------------------------------------------------------
def test_creates_unresolved_follow_begin_lose_and_end(store: JobStore, model: str) -> None:
    """A create begun is unresolved (in order sent) until ended; a lost one says so; ending it clears the
    loss; one sent an hour before a newer one drops out; scopes are apart."""
    a, b, c = (job_ref(new_id(), "j") for _ in range(3))
    store.begin_create("acct", model, b, NOW + 5)
    store.begin_create("acct", model, a, NOW)
    assert store.creates_unresolved("acct", model) == [(a, NOW, False), (b, NOW + 5, False)]
    store.lose_create("acct", model, a)
    assert store.creates_unresolved("acct", model) == [(a, NOW, True), (b, NOW + 5, False)]
    assert store.creates_unresolved("acct", model + "-other") == []
    assert store.creates_unresolved("other", model) == []
    store.end_create("acct", model, a)
    store.begin_create("acct", model, a, NOW + 6)
    assert store.creates_unresolved("acct", model) == [(b, NOW + 5, False), (a, NOW + 6, False)]
    store.begin_create("acct", model, c, NOW + 5 + 3600)
    assert store.creates_unresolved("acct", model) == [(a, NOW + 6, False), (c, NOW + 3605, False)]
    store.end_create("acct", model, "nobody")


def test_own_task_never_replaces_an_owner(store: JobStore) -> None:
    """The first job to own a task keeps it: asking again answers True, another job is refused."""
    task, first, second = "task-" + secrets.token_hex(4), job_ref(new_id(), "a"), job_ref(new_id(), "b")
    assert store.task_owner(task) is None
    assert store.own_task(task, first)
    assert store.own_task(task, first)
    assert not store.own_task(task, second)
    assert store.task_owner(task) == first


# --- retention: purging finished jobs and batches ------------------------------------------------------------
def end_at(store: JobStore, ref: str, status: Status, at: float, task_id: str | None = None) -> None:
    """Move a job along `PATHS` to `status`, every step at time `at`; `task_id` becomes its task when it is
    submitted (and the task's owner)."""
    for step in PATHS[status]:
        fields = {"task_id": task_id} if task_id and step is Status.SUBMITTED else None
        assert store.transition(ref, step, expected_attempt=None, fields=fields, now=at).ok
    if task_id:
        assert store.own_task(task_id, ref)


def test_purge_removes_the_jobs_that_ended_before_the_cut_off_and_keeps_younger_ones(
    store: JobStore, model: str
) -> None:
    """A job that ended at or before `now - older_than_s` leaves with its task's owner and its place in the batch;
    one that ended after, and one still running, stay; the batch's counters still count the purged job."""
    batch_id, (old, edge, young, running) = batch_of(store, model, 4)
    tasks = {ref: "task-" + secrets.token_hex(4) for ref in (old, edge, young)}
    end_at(store, old, Status.SUCCEEDED, NOW + 10, task_id=tasks[old])
    end_at(store, edge, Status.FAILED, NOW + 50)
    end_at(store, young, Status.PARTIALLY_SUCCEEDED, NOW + 51, task_id=tasks[young])
    end_at(store, running, Status.RUNNING, NOW)
    before = store.batch_summary(batch_id)
    assert before is not None
    assert store.purge(DAY, now=NOW + 50 + DAY) == Purged(jobs=2, batches=0, more=False)
    assert store.get(old) is None and store.get(edge) is None and store.task_owner(tasks[old]) is None
    assert store.task_owner(tasks[young]) == young
    assert [job.ref for job in store.jobs(batch_id)] == [young, running]
    assert store.batch_summary(batch_id) == dataclasses.replace(before, purged=2)


def test_purge_never_touches_a_job_that_has_not_ended_whatever_its_age(store: JobStore, model: str) -> None:
    """Jobs waiting in their queue, admitted, submitting, submitted, running, overdue, downloading, and one due for
    the sweep, all older than any cut-off, are left as they were: records, queue, due index, batch."""
    unfinished = [status for status in PATHS if status not in TERMINAL]
    batch_id, job_refs = batch_of(store, model, len(unfinished) + 1, seal=True)
    for ref, status in zip(job_refs, unfinished, strict=False):
        end_at(store, ref, status, NOW)
    assert store.claim(job_refs[-1], Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=NOW).ok

    def seen() -> tuple[Any, ...]:
        return (
            [store.get(r) for r in job_refs],
            store.waiting([model]),
            store.due(math.inf),
            store.batch_summary(batch_id),
        )

    before = seen()
    assert store.purge(0, now=NOW + 365 * DAY) == Purged()
    assert seen() == before and before[1] and len(before[2]) == 1


def test_a_batch_leaves_once_sealed_finished_and_without_jobs(store: JobStore, model: str) -> None:
    """A sealed batch whose jobs all ended before the cut-off leaves with its rejected rows; a batch never sealed
    (like the request stream's) keeps its record and counters though its jobs leave; a sealed one with a job still
    running stays; an empty sealed batch leaves if it finished before the cut-off, and stays if after."""
    done_id, done_refs = batch_of(store, model, 2)
    store.record_rejected(done_id, 9, "prompt", "empty", {})
    for ref in done_refs:
        end_at(store, ref, Status.FAILED, NOW + 1)
    assert store.seal_batch(done_id, now=NOW + 2)
    open_id, (open_ref,) = batch_of(store, model, 1)
    end_at(store, open_ref, Status.CANCELED, NOW + 1)
    busy_id, (busy_ended, busy_running) = batch_of(store, model, 2, seal=True)
    end_at(store, busy_ended, Status.CANCELED, NOW + 1)
    end_at(store, busy_running, Status.RUNNING, NOW + 1)
    empty_old, empty_new = new_id(), new_id()
    for batch_id, at in ((empty_old, NOW + 1), (empty_new, NOW + 20)):
        store.open_batch(batch_id, source="every row rejected", now=NOW)
        store.record_rejected(batch_id, 2, "prompt", "empty", {})
        assert store.seal_batch(batch_id, now=at)
    assert store.purge(DAY, now=NOW + 10 + DAY) == Purged(jobs=4, batches=2, more=False)
    for gone in (done_id, empty_old):
        assert store.batch_summary(gone) is None and store.rejected(gone) == [] and list(store.jobs(gone)) == []
        assert gone not in store.batch_ids()
    kept = store.batch_summary(open_id)
    assert kept is not None and (kept.total, kept.terminal, kept.purged, kept.counts) == (1, 1, 1, {"canceled": 1})
    busy = store.batch_summary(busy_id)
    assert busy is not None and busy.purged == 1 and [job.ref for job in store.jobs(busy_id)] == [busy_running]
    assert store.rejected(empty_new) != [] and {open_id, busy_id, empty_new} <= set(store.batch_ids())


def test_a_batch_that_keeps_receiving_jobs_keeps_coherent_counters(store: JobStore, model: str) -> None:
    """In a batch that is never sealed (the request stream's), purged jobs stay counted: jobs added after a purge
    count on from its total, and sealed it is done once every job, purged or not, has ended."""
    batch_id, (a, b) = batch_of(store, model, 2)
    end_at(store, a, Status.SUCCEEDED, NOW + 1)
    end_at(store, b, Status.FAILED, NOW + 1)
    assert store.purge(DAY, now=NOW + 2 + DAY) == Purged(jobs=2)
    c, d = job_ref(batch_id, "j2"), job_ref(batch_id, "j3")
    assert store.create_jobs([new_job(c, 3, model), new_job(d, 4, model)]) == [None, None]
    summary = store.batch_summary(batch_id)
    assert summary is not None
    assert (summary.total, summary.terminal, summary.purged) == (4, 2, 2)
    assert summary.counts == {"succeeded": 1, "failed": 1, "accepted": 2}
    assert not store.seal_batch(batch_id, now=NOW + 3 + DAY)
    end_at(store, c, Status.CANCELED, NOW + 4 + DAY)
    assert store.transition(d, Status.CANCELED, expected_attempt=None, now=NOW + 5 + DAY).batch_finished
    done = store.batch_summary(batch_id)
    assert done is not None and done.done and (done.total, done.terminal, done.purged) == (4, 4, 2)


def test_once_only_holds_while_the_job_is_kept(store: JobStore, model: str) -> None:
    """Creating a job again finds it (and creates nothing) until it is purged; after that the same ref is a new
    job: the window in which a resent request or CSV row is not sent twice is the retention."""
    _, (ref,) = batch_of(store, model, 1)
    end_at(store, ref, Status.SUCCEEDED, NOW + 1)
    assert store.create_jobs([new_job(ref, 1, model)]) == [Status.SUCCEEDED]
    assert store.purge(DAY, now=NOW + DAY) == Purged()
    assert store.create_jobs([new_job(ref, 1, model)]) == [Status.SUCCEEDED]
    assert store.purge(DAY, now=NOW + 1 + DAY) == Purged(jobs=1)
    assert store.create_jobs([new_job(ref, 1, model)]) == [None]


def test_purge_takes_the_earliest_ended_first_up_to_its_limit(store: JobStore, model: str) -> None:
    """With five jobs of a finished batch past the cut-off and a limit of two, each purge removes the two that
    ended first and says more may be left, and the batch leaves with its last job; a limit under 1 is refused."""
    batch_id, job_refs = batch_of(store, model, 5, seal=True)
    for i, ref in enumerate(reversed(job_refs)):
        end_at(store, ref, Status.CANCELED, NOW + i)
    left = []
    outcomes = []
    for _ in range(3):
        outcomes.append(store.purge(DAY, now=NOW + 10 + DAY, limit=2))
        left.append([job.ref for job in store.jobs(batch_id)])
    assert outcomes == [Purged(2, 0, True), Purged(2, 0, True), Purged(1, 1, False)]
    assert left == [job_refs[:3], job_refs[:1], []]
    with pytest.raises(ValueError, match="limit"):
        store.purge(DAY, limit=0)


@pytest.fixture
def indexed(store: JobStore, request: pytest.FixtureRequest) -> Callable[[], tuple[dict[str, float], dict[str, float]]]:
    """What the purge reads, as the store holds it: (finished jobs, finished batches), each name -> score."""
    if isinstance(store, MemoryJobStore):
        return lambda: (dict(store._finished.items()), dict(store._batches_done.items()))
    observer = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    request.addfinalizer(observer.close)
    return lambda: (
        dict(observer.zrange(INDEXES[0], 0, -1, withscores=True)),
        dict(observer.zrange(INDEXES[1], 0, -1, withscores=True)),
    )


INDEXES = ("genq:finished", "genq:batches:done")


def test_the_indexes_hold_exactly_the_finished_jobs_and_batches(
    store: JobStore, model: str, indexed: Callable[[], tuple[dict[str, float], dict[str, float]]]
) -> None:
    """A job is indexed at its end time while it is terminal (a revival takes it out); a batch at its `done_at`
    while it is sealed and finished: reopening it, giving it a job or reviving one of its jobs takes it out, and
    sealing it again without a new job puts it back at its old `done_at`."""
    batch_id, (a, b) = batch_of(store, model, 2, seal=True)
    end_at(store, a, Status.FAILED, NOW + 1)
    assert indexed() == ({a: NOW + 1}, {})
    end_at(store, b, Status.SUCCEEDED, NOW + 2)
    assert indexed() == ({a: NOW + 1, b: NOW + 2}, {batch_id: NOW + 2})
    store.open_batch(batch_id, source="again.csv", now=NOW + 3)
    assert indexed()[1] == {}
    assert not store.seal_batch(batch_id, now=NOW + 4)
    assert indexed()[1] == {batch_id: NOW + 2}
    assert store.create_jobs([new_job(job_ref(batch_id, "late"), 3, model)]) == [None]
    assert indexed()[1] == {}
    assert store.transition(job_ref(batch_id, "late"), Status.CANCELED, expected_attempt=None, now=NOW + 5).ok
    assert indexed()[1] == {batch_id: NOW + 5}
    failed = store.get(a)
    assert failed is not None and store.revive(failed, now=NOW + 6).ok
    assert indexed() == ({b: NOW + 2, job_ref(batch_id, "late"): NOW + 5}, {})


def test_an_index_entry_of_a_job_that_is_not_finished_is_dropped_and_the_job_kept(
    store: JobStore, model: str, indexed: Callable[[], tuple[dict[str, float], dict[str, float]]], redis_url: str
) -> None:
    """Should the finished-job index ever name a job that is not terminal, or one whose record is gone, the purge
    drops the entry and removes nothing else: an unfinished job is never purged, whatever the index says."""
    batch_id, (running, ended) = batch_of(store, model, 2)
    end_at(store, running, Status.RUNNING, NOW)
    end_at(store, ended, Status.CANCELED, NOW)
    ghost = job_ref(batch_id, "ghost")
    if isinstance(store, MemoryJobStore):
        store._finished.add(running, NOW)
        store._finished.add(ghost, NOW)
    else:
        with redis.Redis.from_url(redis_url) as raw:
            raw.zadd(INDEXES[0], {running: NOW, ghost: NOW})
    assert store.purge(DAY, now=NOW + DAY) == Purged(jobs=1)
    assert indexed() == ({}, {})
    job = store.get(running)
    assert job is not None and job.status is Status.RUNNING
    assert [j.ref for j in store.jobs(batch_id)] == [running]


def test_a_job_that_ended_again_after_it_was_read_for_the_purge_is_kept_in_redis(redis_url: str) -> None:
    """The Redis purge reads its candidates, then removes each in a script of its own: a job revived and ended
    again in between (its new end after the cut-off) is left alone by that script."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisJobStore(client)
    _, (ref,) = batch_of(store, "m-race", 1)
    end_at(store, ref, Status.FAILED, NOW + 1)
    candidates = client.zrangebyscore(INDEXES[0], "-inf", NOW + 10)
    job = store.get(ref)
    assert job is not None and store.revive(job, now=NOW + 20).ok
    assert store.transition(ref, Status.CANCELED, expected_attempt=None, now=NOW + 30).ok
    assert store._purge_jobs(candidates, NOW + 10) == 0
    assert store.get(ref) is not None and client.zscore(INDEXES[0], ref) == NOW + 30
    client.close()


def test_purge_is_idempotent(store: JobStore, model: str) -> None:
    """A second purge with the same cut-off finds nothing more to remove and changes nothing."""
    batch_id, (old, young) = batch_of(store, model, 2, seal=True)
    end_at(store, old, Status.SUCCEEDED, NOW + 1)
    end_at(store, young, Status.SUCCEEDED, NOW + 100)
    assert store.purge(DAY, now=NOW + 50 + DAY) == Purged(jobs=1)
    before = (store.get(young), store.batch_summary(batch_id), store.batch_ids())
    assert store.purge(DAY, now=NOW + 50 + DAY) == Purged()
    assert (store.get(young), store.batch_summary(batch_id), store.batch_ids()) == before


def test_a_revived_job_stays_until_its_new_end_is_past_the_cut_off(store: JobStore, model: str) -> None:
    """A job revived after it ended long ago is no longer finished and stays; once it ends again it leaves (with
    its batch) only when that new end is past the cut-off."""
    batch_id, (ref,) = batch_of(store, model, 1, seal=True)
    end_at(store, ref, Status.FAILED, NOW + 1)
    job = store.get(ref)
    assert job is not None and store.revive(job, now=NOW + DAY).ok
    assert store.purge(DAY, now=NOW + 3 * DAY) == Purged()
    assert store.transition(ref, Status.CANCELED, expected_attempt=None, now=NOW + 2 * DAY + 10).batch_finished
    assert store.purge(DAY, now=NOW + 3 * DAY) == Purged()
    assert store.get(ref) is not None and store.batch_summary(batch_id) is not None
    assert store.purge(DAY, now=NOW + 3 * DAY + 10) == Purged(jobs=1, batches=1)


def test_a_reopened_batch_stays_until_it_is_sealed_again(
    store: JobStore, model: str, events: Callable[[], list[dict[str, Any]]]
) -> None:
    """A finished batch reopened for more rows is not removed while open, though its old jobs are; sealed again
    without a new job it is finished as before (no second event) and leaves."""
    batch_id, (ref,) = batch_of(store, model, 1, seal=True)
    end_at(store, ref, Status.CANCELED, NOW + 1)
    store.open_batch(batch_id, source="again.csv", now=NOW + 5)
    assert store.purge(DAY, now=NOW + 10 + DAY) == Purged(jobs=1)
    assert store.batch_summary(batch_id) is not None
    assert not store.seal_batch(batch_id, now=NOW + 20 + DAY)
    assert store.purge(DAY, now=NOW + 10 + DAY) == Purged(batches=1)
    assert store.batch_summary(batch_id) is None
    assert [e["type"] for e in events()] == ["genq.batch.finished"]


# --- both stores, one random history -------------------------------------------------------------------------
#: What a step does: a transition to a status drawn from all of them ("transition"), or to one the table allows
#: from where the job is ("onward": not terminal; "end": terminal), so that histories get far along the table
#: and batches finish, instead of being mostly refused at its start; a claim; a revival; a seal; reopening the
#: batch (`open_batch` again, as a rerun of its file does); a due push.
KINDS = ["transition", "onward", "onward", "end", "claim", "revive", "seal", "reopen", "push_due"]
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 1),  # which job
        st.sampled_from(list(Status)),  # the target of "transition" and "claim"
        st.integers(0, 7),  # which allowed move "onward" and "end" take
        # The expected attempt: None (any), else the job's current attempt plus this (-1: stale, 1: not yet).
        st.one_of(st.none(), st.sampled_from([0, 0, 0, -1, 1])),
        st.one_of(st.none(), st.integers(1, 100)),  # due in that many seconds (None: none)
    ),
    min_size=10,
    max_size=60,
)
Operation = tuple[str, int, Status, int, int | None, int | None]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPERATIONS, st.booleans())
def test_both_stores_apply_any_history_alike(redis_url: str, operations: list[Operation], sealed: bool) -> None:
    """The same random sequence of transitions, claims, revivals, seals and due pushes, applied to both stores
    from the same start, gives the same outcomes, job and batch records (string for string), due index, queue,
    gauges and events."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.flushall()
        stream = "genq:events:" + secrets.token_hex(4)
        on_redis, in_memory = RedisJobStore(client, event_stream=stream), MemoryJobStore(event_stream=stream)
        model, batch_id = "m-prop", new_id()
        job_refs = [job_ref(batch_id, f"j{i}") for i in range(2)]
        for s in (on_redis, in_memory):
            s.open_batch(batch_id, source="p", priority=3, now=NOW)
            s.create_jobs([new_job(ref, i + 1, model) for i, ref in enumerate(job_refs)])
            if sealed:
                s.seal_batch(batch_id, now=NOW)
        for step, (kind, which, status, k, offset, due_in) in enumerate(operations):
            now, ref = NOW + step + 1, job_refs[which]
            outcomes = [apply(s, kind, ref, status, k, offset, due_in, now=now) for s in (on_redis, in_memory)]
            assert outcomes[0] == outcomes[1], (step, kind, ref)
        assert [on_redis.get(r) for r in job_refs] == [in_memory.get(r) for r in job_refs]
        assert on_redis.batch_summary(batch_id) == in_memory.batch_summary(batch_id)
        # The records themselves, string for string: the memory store keeps what the Lua writes, encoding included.
        assert [client.hgetall(f"genq:job:{r}") for r in job_refs] == [in_memory._jobs[r] for r in job_refs]
        assert client.hgetall(f"genq:batch:{batch_id}") == in_memory._batches[batch_id]
        days = {utc_day(NOW + step + 1) for step in range(len(operations))}
        assert {d: client.hgetall(f"genq:billed:{d}") for d in days} == {d: in_memory._billed.get(d, {}) for d in days}
        assert on_redis.due(math.inf) == in_memory.due(math.inf)
        assert drain(on_redis, model) == drain(in_memory, model)
        assert on_redis.gauges() == in_memory.gauges()
        assert redis_events(client, stream) == in_memory.events()
        assert indexes(client) == memory_indexes(in_memory)
    finally:
        client.close()


def indexes(client: redis.Redis) -> tuple[Any, ...]:
    """What the purge reads in Redis: the finished jobs and the finished batches, with their scores."""
    return tuple(client.zrange(key, 0, -1, withscores=True) for key in ("genq:finished", "genq:batches:done"))


def memory_indexes(store: MemoryJobStore) -> tuple[Any, ...]:
    return store._finished.items(), store._batches_done.items()


def apply(
    store: JobStore, kind: str, ref: str, status: Status, k: int, offset: int | None, due_in: int | None, *, now: float
) -> Any:
    """One step of a random history; what the store answered."""
    job = store.get(ref)
    assert job is not None
    expected = None if offset is None else job.attempt + offset
    due_at = None if due_in is None else now + due_in
    if kind in ("transition", "onward", "end"):
        allowed = sorted(TRANSITIONS[job.status] & TERMINAL if kind == "end" else TRANSITIONS[job.status] - TERMINAL)
        target = allowed[k % len(allowed)] if allowed and kind != "transition" else status
        event = {"id": f"{ref}/{target}/{now!r}"}
        # Some moves carry a bill, of one of two tasks (a second bill of one task counts nothing).
        bill = Bill((1, 2.5, 0.1)[k % 3], f"task-{k % 2}", "acct", "m-prop", now) if k >= 4 else None
        return store.transition(ref, target, expected_attempt=expected, due_at=due_at, event=event, now=now, bill=bill)
    if kind == "claim":
        expected = job.attempt if expected is None else expected
        return store.claim(ref, status, expected_attempt=expected, action=Action.POLL, lease_until=now + 60, now=now)
    if kind == "revive":
        return store.revive(job if expected is None else dataclasses.replace(job, attempt=expected), now=now)
    if kind == "push_due":
        return store.push_due(ref, now + (due_in or 0))
    if kind == "reopen":
        return store.open_batch(job.batch_id, source="p", priority=3, now=now)
    return store.seal_batch(job.batch_id, now=now)


def test_push_due_leaves_a_vanished_job_alone_in_redis(redis_url: str) -> None:
    """A due-index entry whose job record is gone (the sweep reads the index, then the job disappears) is not
    brought back by `push_due` as a record holding only `due_at`: nothing is moved and no record appears."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisJobStore(client)
    client.zadd("genq:due", {"b/gone": NOW})
    assert not store.push_due("b/gone", NOW + 60)
    assert not client.exists("genq:job:b/gone") and store.get("b/gone") is None
    client.close()


@pytest.mark.parametrize("name", ["no_such_field", "status", "attempt", "next_action", "due_at", "t_failed", "model"])
def test_a_change_may_set_only_the_record_fields_that_are_its_to_set(store: JobStore, model: str, name: str) -> None:
    """A field not on the job record, or one the move itself writes (status, attempt, next action, due time,
    `t_{status}`) or creation fixed, is refused before anything is written."""
    _, (ref,) = batch_of(store, model, 1)
    before = store.get(ref)
    with pytest.raises(ValueError, match=name):
        store.transition(ref, Status.ADMITTED, expected_attempt=0, fields={name: "1"})
    with pytest.raises(ValueError, match=name):
        store.claim(ref, Status.ACCEPTED, expected_attempt=0, action=Action.ADMIT, lease_until=NOW, fields={name: "1"})
    assert store.get(ref) == before


#: A job: its batch (of three), the status it reaches, and when (seconds after NOW) it gets there.
JOBS = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(list(PATHS)), st.integers(0, 100)), max_size=12)
#: Per batch: never sealed, sealed before its jobs move, or sealed after all of them (at +100).
SEALS = st.tuples(*[st.sampled_from(["never", "before", "after"])] * 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JOBS, SEALS, st.integers(0, 110), st.integers(1, 4))
def test_purge_removes_exactly_the_jobs_that_ended_before_the_cut_off(
    redis_url: str, jobs: list[tuple[int, Status, int]], seals: tuple[str, ...], cut: int, limit: int
) -> None:
    """For any mix of job statuses and end times over three batches, sealed or not, purging in chunks of any size
    (`workers/retention.py`) until nothing is left removes exactly the terminal jobs that ended at or before the
    cut-off, and exactly the sealed, finished batches whose jobs all went and which finished by then; both stores
    end alike, record for record and index for index."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.flushall()
        stores = (RedisJobStore(client), MemoryJobStore())
        batch_ids = [f"b{i}" for i in range(3)]
        refs = [job_ref(batch_ids[b], f"j{i}") for i, (b, _, _) in enumerate(jobs)]
        for s in stores:
            for batch_id in batch_ids:
                s.open_batch(batch_id, source="p", now=NOW)
            s.create_jobs([new_job(ref, i + 1, "m-prop") for i, ref in enumerate(refs)])
            for batch_id, seal in zip(batch_ids, seals, strict=True):
                if seal == "before":
                    s.seal_batch(batch_id, now=NOW)
            for (_, status, at), ref in sorted(zip(jobs, refs, strict=True), key=lambda pair: pair[0][2]):
                end_at(s, ref, status, NOW + at)  # in time order, as the fleet's transitions happen
            for batch_id, seal in zip(batch_ids, seals, strict=True):
                if seal == "after":
                    s.seal_batch(batch_id, now=NOW + 100)
        cutoff = NOW + cut
        gone_jobs = {ref for (_, status, at), ref in zip(jobs, refs, strict=True) if status in TERMINAL and at <= cut}
        summaries = {b: stores[0].batch_summary(b) for b in batch_ids}
        gone_batches = {
            b
            for b, summary in summaries.items()
            if summary is not None
            and summary.done
            and (summary.done_at or math.inf) <= cutoff
            and all(ref in gone_jobs for ref in refs if ref.startswith(b + "/"))
        }
        for s in stores:
            report = purge_finished(s, DAY, now=cutoff + DAY, chunk=limit)
            assert (report.jobs, report.batches, report.complete) == (len(gone_jobs), len(gone_batches), True)
            assert {ref for ref in refs if s.get(ref) is None} == gone_jobs
            assert {b for b in batch_ids if s.batch_summary(b) is None} == gone_batches
        on_redis, in_memory = stores
        assert [client.hgetall(f"genq:job:{r}") for r in refs] == [in_memory._jobs.get(r, {}) for r in refs]
        assert [client.hgetall(f"genq:batch:{b}") for b in batch_ids] == [
            in_memory._batches.get(b, {}) for b in batch_ids
        ]
        assert on_redis.batch_ids() == in_memory.batch_ids()
        assert [list(on_redis.jobs(b)) for b in batch_ids] == [list(in_memory.jobs(b)) for b in batch_ids]
        assert indexes(client) == memory_indexes(in_memory)
    finally:
        client.close()
