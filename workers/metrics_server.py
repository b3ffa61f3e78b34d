"""The worker's metrics endpoint: started in the worker's main process before the prefork pool forks.

It serves the counters and histograms of every pool process (prometheus_client multiprocess mode: the
environment variable `PROMETHEUS_MULTIPROC_DIR` must name an empty, writable folder before the worker starts)
and the fleet-wide state read from Redis (`StoreStateCollector`). The folder must exist, empty,
before the worker process starts: prometheus_client opens its files there on import.

Its configuration is the Celery setting `genq_metrics` (`config/celery_app.py`): the port and address, and
`slot_limits` (account -> model -> the scope's slot limit) for every configured account, so that every
worker reports on every scope of the fleet, whichever account it names itself. Its Redis is the broker's
(`broker_url`, the one setting Celery masks when it shows its configuration).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config.settings import Settings
from workers import metrics
from workers.claimed import log
from workers.jobstore import Gauges, RedisJobStore
from workers.quota.quota import Quota, Scope

#: Account -> model -> the scope's slot limit (`config.accounts.slot_limits`).
SlotLimits = Mapping[str, Mapping[str, int]]


def start_metrics_server(config: dict[str, Any], redis_url: str) -> bool:
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
    limits: SlotLimits = config.get("slot_limits") or {}
    metrics.preset((account, model) for account, models in limits.items() for model in models)
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    store, quota = RedisJobStore(client), Quota.redis(client)  # read-only here: gauges and slots held
    probe_s = float(config.get("slot_probe_s") or Settings.model_fields["slot_probe_s"].default)

    def limit_now(scope: Scope, configured: int, now: float) -> int:
        return quota.slot_limit(scope, configured, probe_s, now)

    registry.register(StoreStateCollector(store.gauges, quota.slots_held, limits, limit_now=limit_now))
    start_http_server(port, addr=str(config.get("bind", "127.0.0.1")), registry=registry)
    log.info("metrics served", port=port, bind=config.get("bind"))
    return True


def process_exited(pid: int) -> None:
    """Let the multiprocess collector drop the live gauges of a pool process that exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class StoreStateCollector(Collector):
    """Fleet-wide state, read from the job store and the quota at scrape time. Every worker serves the same
    figures, so the fleet's figure is any worker's (`max by` over instances), never their sum.

    - `genq_jobs{status}`: jobs in each status, all batches;
    - per scope, for every configured account and every model it serves: `genq_upstream_tasks` (jobs holding
      one of the scope's slots, i.e. with a task queued or running upstream or about to be created),
      `genq_slot_limit` (the scope's limit in force: tasks at once plus the server-side queue, the account's
      overrides applied, or fewer while a throttle-mode 429 has cut it) and `genq_slot_utilisation` (the first
      over the second). Admission never takes a slot beyond the limit, so utilisation is at most 1 unless the
      scope really holds more than it may: a job whose lease lapsed took its slot back on top of a full scope,
      or the limit was lowered (by configuration, or by a throttle-mode cut; or workers disagree on it) while
      jobs held slots. Above 1 is an alarm, never rounding;
    - `genq_account_paused{account}`: every configured account (0 or 1), and any other account paused.
    """

    def __init__(
        self,
        gauges: Callable[[], Gauges],
        slots_held: Callable[[Sequence[Scope], float], Mapping[Scope, int]],
        slot_limits: SlotLimits,
        clock: Callable[[], float] = time.time,
        limit_now: Callable[[Scope, int, float], int] | None = None,
    ) -> None:
        self.gauges = gauges
        self.slots_held = slots_held
        self.limit_now = limit_now or (lambda scope, configured, now: configured)
        self.limits = {Scope(a, m): limit for a, models in slot_limits.items() for m, limit in models.items()}
        self.accounts = sorted(slot_limits)
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.gauges()
        jobs = GaugeMetricFamily("genq_jobs", "Jobs in each status, over all batches", labels=["status"])
        for status, value in sorted(state.jobs.items()):
            jobs.add_metric([status], float(value))
        yield jobs
        yield from self._scopes()
        paused = GaugeMetricFamily("genq_account_paused", "1 while an account is paused", labels=["account"])
        for account in sorted({*self.accounts, *state.paused}):  # every configured one, so that 0 is visible
            paused.add_metric([account], 1.0 if account in state.paused else 0.0)
        yield paused

    def _scopes(self) -> Iterator[GaugeMetricFamily]:
        scopes = sorted(self.limits, key=str)
        now = self.clock()
        held = self.slots_held(scopes, now)
        labels = ["account", "model"]
        upstream = GaugeMetricFamily(
            "genq_upstream_tasks",
            "Jobs holding a slot of the scope: their task queued or running upstream, or about to be created",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "genq_slot_limit", "The scope's slot limit: tasks at once plus the server-side queue", labels=labels
        )
        utilisation = GaugeMetricFamily(
            "genq_slot_utilisation", "Slots held / the scope's slot limit (above 1: over the limit)", labels=labels
        )
        for scope in scopes:
            values = [scope.account, scope.model]
            in_force = max(1, self.limit_now(scope, self.limits[scope], now))
            upstream.add_metric(values, float(held[scope]))
            limit.add_metric(values, float(in_force))
            utilisation.add_metric(values, held[scope] / in_force)
        yield from (upstream, limit, utilisation)
