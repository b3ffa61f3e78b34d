"""Prometheus metrics. Event-type metrics are prometheus_client counters and histograms, aggregated over a
prefork worker's processes in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set before the worker starts): each
worker serves what its own processes counted, so the fleet's figure is the sum over workers.
State-type metrics (jobs by status, tasks upstream, slot utilisation, paused accounts) are read from Redis at
scrape time by `metrics_server.StoreStateCollector`, so they are exact for the whole fleet, not per process, and
every worker serves the same figures: the fleet's figure is any one of them (`max` over workers), never a sum.

Labels are bounded: `status` by the statuses of `workers/job.py`, `account` by the configured accounts, `model`
by the catalogue, `endpoint` by the two upstream calls that can be throttled. `preset` creates every series of
the configured scopes at zero when the endpoint starts, so that `rate()` and `increase()` see a job's first
increment (a series that appears already at 1 loses it) and a scope that never moved still shows its zero.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram

from workers.job import Status

_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_SCOPE = ["account", "model"]
#: The upstream calls whose 429s are counted (`genq_throttled_total{endpoint}`).
THROTTLED_ENDPOINTS = ("create", "query")

JOB_STATUS = Counter("genq_job_status", "Jobs that entered each status", ["status"])
UPSTREAM_QUEUE = Histogram(
    "genq_upstream_queue_seconds", "Time tasks waited upstream (scheduled - submit)", _SCOPE, buckets=_SECONDS
)
UPSTREAM_RUN = Histogram(
    "genq_upstream_run_seconds", "Time tasks ran upstream (end - scheduled)", _SCOPE, buckets=_SECONDS
)
DETECTION_LAG = Histogram(
    "genq_detection_lag_seconds",
    "From the upstream end_time to genq noticing",
    _SCOPE,
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
POLLS_PER_JOB = Histogram(
    "genq_polls_per_job", "Queries spent on a job until it ended", _SCOPE, buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
)
TASK_LISTS = Counter(
    "genq_task_lists",
    "Pages of the task list read by an account's watcher (GET /tasks), by outcome",
    ["account", "outcome"],
)
#: The outcomes of a task-list read (`genq_task_lists_total{outcome}`).
TASK_LIST_OUTCOMES = ("ok", "failed")
THROTTLED = Counter("genq_throttled", "429 / Throttling answers received", [*_SCOPE, "endpoint"])
BILLED_UNITS = Counter(
    "genq_billed_units",
    "What the service bills for tasks that succeeded: images (image models) or seconds of video (video models)",
    _SCOPE,
)
DOWNLOAD_BYTES = Counter("genq_download_bytes", "Result bytes stored in the bucket")
DOWNLOAD_SECONDS = Histogram(
    "genq_download_seconds",
    "Time to fetch and store one result object",
    _SCOPE,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
FINALIZE_FAILURES = Counter("genq_finalize_failures", "Attempts to store results that failed (S3 or download)")
RESULTS_AT_RISK = Counter("genq_results_at_risk", "Jobs whose paid results may expire before being stored")

_SCOPED_HISTOGRAMS = (UPSTREAM_QUEUE, UPSTREAM_RUN, DETECTION_LAG, POLLS_PER_JOB, DOWNLOAD_SECONDS)


def preset(scopes: Iterable[tuple[str, str]]) -> None:
    """Create, at zero, the series of every status and of every (account, model) scope given."""
    for status in Status:
        JOB_STATUS.labels(status=status.value)
    for account, model in scopes:
        for outcome in TASK_LIST_OUTCOMES:
            TASK_LISTS.labels(account=account, outcome=outcome)
        BILLED_UNITS.labels(account=account, model=model)
        for endpoint in THROTTLED_ENDPOINTS:
            THROTTLED.labels(account=account, model=model, endpoint=endpoint)
        for histogram in _SCOPED_HISTOGRAMS:
            histogram.labels(account=account, model=model)
