"""Retention's own rules, on the memory store: a periodic run does bounded work and the next goes on; beat runs
the purge on the events queue; the retention cannot be set under 25 h. (What a purge removes, store by store, is
in `test_job_store_contract.py`; on the real services, in `tests/integration/test_retention.py`.)"""

from __future__ import annotations

import pytest

from config.celery_app import PURGE_EVERY_S, celery_config
from config.settings import MIN_RETENTION_S, ConfigInvalid, Settings, load_settings
from workers.job import Status, record_of
from workers.jobstore import MemoryJobStore, NewJob
from workers.refs import job_ref
from workers.requests import GenerationRequest
from workers.retention import purge_finished

NOW = 1_700_000_000.0


def test_a_run_stops_at_its_budget_and_the_next_one_goes_on() -> None:
    """Twelve ended jobs, a budget of five in chunks of two: each run removes five and says it stopped short, the
    third removes the last two with their sealed batch and says it is complete."""
    store = MemoryJobStore()
    store.open_batch("nightly", source="n.csv", now=NOW)
    refs = [job_ref("nightly", f"j{i}") for i in range(12)]
    request = GenerationRequest(model="m", prompt="a cat")
    store.create_jobs([NewJob(ref, i + 1, "m", record_of(ref, i + 1, request, NOW)) for i, ref in enumerate(refs)])
    store.seal_batch("nightly", now=NOW)
    for ref in refs:
        assert store.transition(ref, Status.CANCELED, expected_attempt=None, now=NOW + 1).ok
    runs = [purge_finished(store, 3600, now=NOW + 7200, budget=5, chunk=2) for _ in range(3)]
    assert [(r.jobs, r.batches, r.complete) for r in runs] == [(5, 0, False), (5, 0, False), (2, 1, True)]
    assert runs[0].cutoff == NOW + 3600 and store.batch_ids() == []


def test_beat_purges_on_the_events_queue_every_few_minutes() -> None:
    """Beat's schedule has the purge, routed to the events queue like the sweep, and it expires rather than pile
    up when no worker takes it."""
    config = celery_config(Settings())
    entry = config["beat_schedule"]["genq-purge"]
    assert entry["task"] == "genq.purge" and entry["schedule"] == PURGE_EVERY_S <= 600
    assert entry["options"]["expires"] <= PURGE_EVERY_S
    assert config["task_routes"]["genq.purge"] == {"queue": "events"}


def test_a_retention_under_25_hours_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """`GENQ_RETENTION_S` below 25 h is refused naming the setting and the 24 h life of tasks upstream; 25 h is
    accepted, and the default keeps finished jobs three days."""
    assert Settings().retention_s == 3 * 86400
    monkeypatch.setenv("GENQ_RETENTION_S", str(MIN_RETENTION_S - 1))
    with pytest.raises(ConfigInvalid, match=r"retention_s: .*24 h upstream"):
        load_settings()
    monkeypatch.setenv("GENQ_RETENTION_S", str(MIN_RETENTION_S))
    assert load_settings().retention_s == 25 * 3600
