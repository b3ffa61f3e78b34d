"""What the simulator saw during a run of `ops.bench_quota`, turned into the benchmark's figures.

Everything here reads the simulator's own records (`GET /_sim/counters`, `GET /_sim/tasks`), never the
runner's: a runner cannot flatter itself by miscounting its 429s or its polls.

The FIFO-replay bound is how soon the work the service actually did could have been over. Take the tasks
that were created, per scope (account, model) in the order they were created, each with the time it really
ran (`end - scheduled`). Replay them on the scope's true limits: the i-th create goes out at i / submit rate
seconds (i from 0), as fast as the submit rate allows; it starts at its create, or when the first of the
scope's `concurrency` slots comes free if that is later; it ends its run time after it starts. The bound is
the latest end over all scopes, counted from 0 = the first enqueue. A runner that noticed every end at once
and refilled the slot at once would finish at the bound; every second a slot stood idle, or a create waited
on a late poll, shows as makespan above it.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Scope = tuple[str, str]  # (account, model)


@dataclass(frozen=True)
class TaskRun:
    """One task as the service ran it: its scope, when it was created, and how long it ran (s)."""

    scope: Scope
    created: float
    run_s: float


def task_runs(report: Iterable[Mapping[str, Any]]) -> list[TaskRun]:
    """The tasks of `GET /_sim/tasks` that ran (a task cancelled while it waited never took a slot)."""
    return [
        TaskRun((t["account"], t["model"]), float(t["created"]), float(t["end"]) - float(t["scheduled"]))
        for t in report
        if t.get("scheduled") is not None and t.get("end") is not None
    ]


def fifo_bound_s(runs: Iterable[TaskRun], limits: Mapping[Scope, tuple[float, int]]) -> float:
    """The FIFO-replay bound (module docstring): the latest end when every scope's tasks, in creation order,
    are created as fast as its submit rate allows and run as soon as one of its slots is free."""
    by_scope: defaultdict[Scope, list[TaskRun]] = defaultdict(list)
    for run in runs:
        by_scope[run.scope].append(run)
    latest = 0.0
    for scope, listed in by_scope.items():
        submit_rate, slots = limits[scope]
        free_at = [0.0] * slots  # a heap: when each slot comes free
        for index, run in enumerate(sorted(listed, key=lambda r: r.created)):
            start = max(index / submit_rate, free_at[0])
            heapq.heapreplace(free_at, start + run.run_s)
        latest = max(latest, *free_at)
    return latest


def slot_use(scopes: Iterable[Mapping[str, Any]]) -> float:
    """Busy slot-seconds over slots x time, summed over the scopes that ran anything; each scope's time runs
    from its first task start to its last task start (after which no work was left to fill a slot with)."""
    busy = offered = 0.0
    for scope in scopes:
        intervals = sorted((float(a), float(b)) for a, b in scope["intervals"])
        if not intervals:
            continue
        first, last = intervals[0][0], intervals[-1][0]
        busy += sum(max(0.0, min(b, last) - max(a, first)) for a, b in intervals)
        offered += scope["concurrency"] * (last - first)
    return busy / offered if offered else 1.0


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (`q` in 0..1) of `values`; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Upstream:
    """The figures of one run that the simulator counted."""

    fifo_bound_s: float
    slot_use: float
    mean_run_s: float
    creates: int
    submit_429: int  # creates refused over the submit rate or a burst
    concurrency_429: int  # creates refused over "tasks at once" (throttle mode)
    query_429: int  # task queries and lists refused over the account's budget
    gets: int  # task queries and lists answered
    query_peak_1s: int  # the most task queries and lists sent by one account within any second
    query_qps: int  # that account's budget
    over_concurrency: list[str]  # scopes that ever ran more tasks at once than their limit (a simulator bug)


def upstream(snapshot: Mapping[str, Any], report: Iterable[Mapping[str, Any]]) -> Upstream:
    """The figures from a `GET /_sim/counters` snapshot and a `GET /_sim/tasks` report taken after the run."""
    counters, scopes, accounts = snapshot["counters"], snapshot["scopes"], snapshot.get("accounts", [])
    runs = task_runs(report)
    limits = {(s["account"], s["model"]): (float(s["submit_per_s"]), int(s["concurrency"])) for s in scopes}
    peak = max(accounts, key=lambda a: a["query_peak_1s"], default={"query_peak_1s": 0, "query_qps": 0})
    return Upstream(
        fifo_bound_s=fifo_bound_s(runs, limits),
        slot_use=slot_use(scopes),
        mean_run_s=sum(r.run_s for r in runs) / len(runs) if runs else math.nan,
        creates=int(counters.get("creates", 0)),
        submit_429=int(counters.get("throttled_submit", 0)) + int(counters.get("throttled_burst", 0)),
        concurrency_429=int(counters.get("throttled_concurrency", 0)),
        query_429=int(counters.get("throttled_query", 0)),
        gets=sum(int(a["queries"]) + int(a["lists"]) for a in accounts),
        query_peak_1s=int(peak["query_peak_1s"]),
        query_qps=int(peak["query_qps"]),
        over_concurrency=[
            f"{s['model']} ran {s['max_running']} at once" for s in scopes if s["max_running"] > s["concurrency"]
        ],
    )
