"""The quota benchmark's figures from the simulator's records: the FIFO-replay bound, slot use, percentiles."""

from __future__ import annotations

import math

import pytest

from ops.bench_upstream import TaskRun, fifo_bound_s, percentile, slot_use, task_runs

A, B = ("acct", "model-a"), ("acct", "model-b")


def test_replay_creates_at_the_submit_rate_and_starts_when_a_slot_frees() -> None:
    """Four 1 s tasks on 2 slots at 5 creates/s, listed out of order: created at 0, 0.2, 0.4, 0.6, they start at
    0, 0.2, 1.0 and 1.2, so the last ends at 2.2."""
    runs = [TaskRun(A, created, 1.0) for created in (30.0, 10.0, 40.0, 20.0)]
    assert fifo_bound_s(runs, {A: (5.0, 2)}) == pytest.approx(2.2)


def test_replay_keeps_each_scopes_creation_order_and_run_times() -> None:
    """On two slots, a 3 s task created first and two 1 s tasks after it are over at 3 s; replayed in the
    order they were listed (the short ones first) they would end at 4 s."""
    runs = [TaskRun(A, 3.0, 1.0), TaskRun(A, 2.0, 1.0), TaskRun(A, 1.0, 3.0)]
    assert fifo_bound_s(runs, {A: (100.0, 2)}) == pytest.approx(3.0)


def test_scopes_run_side_by_side_and_the_bound_is_the_latest_end() -> None:
    """Two models' tasks do not wait for each other: the bound is the later scope's end, not the sum."""
    runs = [TaskRun(A, 0.0, 5.0), TaskRun(B, 0.0, 7.0)]
    assert fifo_bound_s(runs, {A: (5.0, 5), B: (5.0, 5)}) == pytest.approx(7.0)


def test_a_task_that_never_ran_is_left_out_of_the_replay() -> None:
    """A task cancelled while it waited has no `scheduled`: it took no slot and counts in no run."""
    report = [
        {"account": "acct", "model": "model-a", "created": 1.0, "scheduled": 2.0, "end": 6.0},
        {"account": "acct", "model": "model-a", "created": 1.5, "scheduled": None, "end": None},
    ]
    assert task_runs(report) == [TaskRun(A, 1.0, 4.0)]


def test_slot_use_counts_busy_slot_seconds_up_to_the_last_start() -> None:
    """Two slots; runs (0, 4) and (2, 10): up to the last start at 2, one slot was busy for 2 s of 2 x 2."""
    scope = {"concurrency": 2, "intervals": [[2.0, 10.0], [0.0, 4.0]]}
    assert slot_use([scope]) == pytest.approx(0.5)


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..10 is 5, p95 is 10, max is 10; no values give NaN."""
    values = [float(v) for v in range(10, 0, -1)]
    assert [percentile(values, q) for q in (0.5, 0.95, 1.0)] == [5.0, 10.0, 10.0]
    assert math.isnan(percentile([], 0.5))
