"""The job store on a real Redis: compare-and-set on the attempt, forward-only status, one event per end."""

from __future__ import annotations

import json
import time

from config.settings import Settings
from tests.conftest import raw_redis
from workers.job import Action, Status, record_of
from workers.jobstore import JobStore, NewJob
from workers.requests import GenerationRequest
from workers.runtime import make_store


def new_job(store: JobStore, ref: str = "b1/j1", line: int = 2) -> Status | None:
    request = GenerationRequest(model="wan2.5-t2i-preview", prompt="a cat", size="1280*1280")
    return store.create_jobs([NewJob(ref, line, request.model, record_of(ref, line, request, time.time()))])[0]


def test_create_is_idempotent_and_reports_the_existing_status(settings: Settings) -> None:
    """Creating a job twice keeps the first and says what status it has; the batch counts it once."""
    store = make_store(settings)
    store.open_batch("b1", source="t")
    new_job(store)
    assert new_job(store) is Status.ACCEPTED
    summary = store.batch_summary("b1")
    assert summary is not None and summary.total == 1 and summary.counts == {"accepted": 1}


def test_a_stale_attempt_cannot_act(settings: Settings) -> None:
    """Once a claim advanced the attempt, a message carrying the old attempt is refused."""
    store = make_store(settings)
    new_job(store)
    first = store.claim("b1/j1", Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=1)
    duplicate = store.claim("b1/j1", Status.ADMITTED, expected_attempt=0, action=Action.SUBMIT, lease_until=1)
    assert first.ok and first.attempt == 1
    assert not duplicate.ok and duplicate.reason == "attempt moved on"


def test_status_only_moves_along_the_allowed_transitions(settings: Settings) -> None:
    """A terminal job cannot be revived, and accepted cannot jump to succeeded."""
    store = make_store(settings)
    new_job(store)
    assert not store.transition("b1/j1", Status.SUCCEEDED, expected_attempt=None).ok
    assert store.transition("b1/j1", Status.CANCELED, expected_attempt=None).ok
    refused = store.transition("b1/j1", Status.ADMITTED, expected_attempt=None)
    assert not refused.ok and "cannot move" in refused.reason


def test_one_event_per_terminal_job_and_one_for_the_batch(settings: Settings) -> None:
    """Ending a job appends its event once, however often the end is attempted; the sealed batch emits its own,
    built by the store from the batch's counts."""
    store = make_store(settings)
    store.open_batch("b1", source="t")
    new_job(store, "b1/j1")
    new_job(store, "b1/j2", line=3)
    store.seal_batch("b1")
    canceled = {"specversion": "1.0", "id": "b1/j1/canceled", "type": "genq.job.canceled"}
    assert store.transition("b1/j1", Status.CANCELED, expected_attempt=0, event=canceled).ok
    assert not store.transition("b1/j1", Status.CANCELED, expected_attempt=0, event=canceled).ok
    failed = {"specversion": "1.0", "id": "b1/j2/failed", "type": "genq.job.failed"}
    done = store.transition("b1/j2", Status.FAILED, expected_attempt=0, event=failed)
    assert done.batch_finished
    events = [json.loads(fields["event"]) for _, fields in raw_redis(settings).xrange(settings.event_stream)]
    assert [e["id"] for e in events[:-1]] == ["b1/j1/canceled", "b1/j2/failed"]  # the refused repeat added none
    batch_event = events[-1]  # nothing of it was given by this test
    assert (batch_event["type"], batch_event["subject"], batch_event["source"]) == ("genq.batch.finished", "b1", "genq")
    assert batch_event["id"].startswith("batch/b1/finished/")
    assert batch_event["data"] == {"batch_id": "b1", "total": 2, "rejected": 0, "counts": {"canceled": 1, "failed": 1}}


def test_rejected_rows_are_recorded_once_per_line(settings: Settings) -> None:
    """Recording the same rejected line twice (a rerun) keeps one record; the batch counts it once."""
    store = make_store(settings)
    store.open_batch("b1", source="t")
    for _ in range(2):
        store.record_rejected("b1", 7, "size", "bad size", {"prompt": "x"})
    summary = store.batch_summary("b1")
    assert summary is not None and summary.rejected == 1
    assert store.rejected("b1") == [{"line": 7, "field": "size", "reason": "bad size", "input": {"prompt": "x"}}]
