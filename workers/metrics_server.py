"""The worker's metrics endpoint: started in the worker's main process before the prefork pool forks.

It serves the counters and histograms of every pool process (prometheus_client multiprocess mode: the
environment variable `PROMETHEUS_MULTIPROC_DIR` must name an empty, writable folder before the worker starts)
and the fleet-wide state read from Redis (`metrics.RedisStateCollector`). The folder must exist, empty,
before the worker process starts: prometheus_client opens its files there on import.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from workers.claimed import log
from workers.metrics import RedisStateCollector


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
    registry.register(RedisStateCollector(client, str(config.get("account", "default"))))
    start_http_server(port, addr=str(config.get("bind", "127.0.0.1")), registry=registry)
    log.info("metrics served", port=port, bind=config.get("bind"))
    return True


def process_exited(pid: int) -> None:
    """Let the multiprocess collector drop the live gauges of a pool process that exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
