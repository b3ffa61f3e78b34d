"""The worker's metrics endpoint: started in the worker's main process before the prefork pool forks.

It serves the counters and histograms of every pool process (prometheus_client multiprocess mode: the
environment variable `PROMETHEUS_MULTIPROC_DIR` must name an empty, writable folder before the worker starts)
and the fleet-wide state read from Redis (`StoreStateCollector`). The folder must exist, empty,
before the worker process starts: prometheus_client opens its files there on import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config.catalogue import CATALOGUE
from workers.claimed import log
from workers.jobstore import Gauges, RedisJobStore


def start_metrics_server(config: dict[str, Any]) -> bool:
    """Start the endpoint if a port is configured. Returns whether it started."""
    port = int(config.get("port") or 0)
    if not port:
        return False
    registry = CollectorRegistry()
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        # The folder is emptied by whoever starts the worker (ops/docker/start, the local stack): files of an
        # earlier run would be summed into this one's figures, and this process already holds files in it.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR is not set: only fleet state from Redis is served, not the "
            "counters of the pool processes"
        )
    client = redis.Redis.from_url(str(config["redis_url"]), decode_responses=True, socket_timeout=5)
    store = RedisJobStore(client)  # read-only here: its gauges
    registry.register(StoreStateCollector(store.gauges, str(config.get("account", "default"))))
    start_http_server(port, addr=str(config.get("bind", "127.0.0.1")), registry=registry)
    log.info("metrics served", port=port, bind=config.get("bind"))
    return True


def process_exited(pid: int) -> None:
    """Let the multiprocess collector drop the live gauges of a pool process that exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class StoreStateCollector(Collector):
    """Fleet-wide state, read from the job store's counters at scrape time."""

    def __init__(self, gauges: Callable[[], Gauges], account: str) -> None:
        self.gauges = gauges
        self.account = account

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.gauges()
        counts, inflight, paused = state.jobs, state.upstream, state.paused
        jobs = GaugeMetricFamily("genq_jobs", "Jobs in each status, over all batches", labels=["status"])
        for status, value in sorted(counts.items()):
            jobs.add_metric([status], float(value))
        upstream = GaugeMetricFamily(
            "genq_upstream_tasks", "Tasks submitted or running upstream", labels=["account", "model"]
        )
        utilisation = GaugeMetricFamily(
            "genq_slot_utilisation", "Tasks upstream / the model's tasks-at-once limit", labels=["account", "model"]
        )
        for model, value in sorted(inflight.items()):
            upstream.add_metric([self.account, model], float(value))
            spec = CATALOGUE.get(model)
            if spec:
                utilisation.add_metric([self.account, model], max(0.0, float(value)) / spec.max_concurrent)
        paused_metric = GaugeMetricFamily("genq_account_paused", "1 while an account is paused", labels=["account"])
        for account in sorted({self.account, *paused}):  # the worker's own account always, so 0 is visible
            paused_metric.add_metric([account], 1.0 if account in paused else 0.0)
        yield from (jobs, upstream, utilisation, paused_metric)
