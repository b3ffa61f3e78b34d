"""Prometheus metrics. Event-type metrics are prometheus_client counters and histograms, aggregated over a
prefork worker's processes in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set before the worker starts).
State-type metrics (jobs by status, tasks upstream, slot utilisation, paused accounts) are read from Redis at
scrape time by `metrics_server.StoreStateCollector`, so they are exact for the whole fleet, not per process.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

JOB_STATUS = Counter("genq_job_status", "Jobs that entered each status", ["status"])
UPSTREAM_QUEUE = Histogram(
    "genq_upstream_queue_seconds", "Time tasks waited upstream (scheduled - submit)", buckets=_SECONDS
)
UPSTREAM_RUN = Histogram("genq_upstream_run_seconds", "Time tasks ran upstream (end - scheduled)", buckets=_SECONDS)
DETECTION_LAG = Histogram(
    "genq_detection_lag_seconds",
    "From the upstream end_time to genq noticing",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
POLLS_PER_JOB = Histogram(
    "genq_polls_per_job", "Queries spent on a job until it ended", buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
)
THROTTLED = Counter("genq_throttled", "429 / Throttling answers received", ["account", "model", "endpoint"])
DOWNLOAD_BYTES = Counter("genq_download_bytes", "Result bytes stored in the bucket")
DOWNLOAD_SECONDS = Histogram(
    "genq_download_seconds",
    "Time to fetch and store one result object",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
FINALIZE_FAILURES = Counter("genq_finalize_failures", "Attempts to store results that failed (S3 or download)")
RESULTS_AT_RISK = Counter("genq_results_at_risk", "Jobs whose paid results may expire before being stored")
