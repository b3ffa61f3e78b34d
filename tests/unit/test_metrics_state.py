"""The fleet state a worker's metrics endpoint serves (`StoreStateCollector`), read through the job store and the
quota, in memory and (the same bodies) over Redis: per (account, model) scope, against each scope's own limit,
for every configured account whichever account the worker names itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr

from config.accounts import AccountSettings
from config.celery_app import celery_config
from config.settings import Settings
from workers import account_pause, metrics
from workers.jobstore import JobStore, MemoryJobStore, RedisJobStore
from workers.metrics_server import SlotLimits, StoreStateCollector
from workers.quota.quota import Quota, Scope

MODEL = "wan2.5-t2i-preview"  # the catalogue says 5 tasks at once
OTHER = "wan2.2-t2i-flash"
NOW = 1_000_000.0
LEASE_S = 600.0
Samples = dict[str, dict[tuple[str, ...], float]]


@pytest.fixture(params=["memory", "redis"])
def fleet(request: pytest.FixtureRequest) -> Iterator[tuple[JobStore, Quota]]:
    if request.param == "memory":
        yield MemoryJobStore(), Quota.memory()
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    yield RedisJobStore(client), Quota.redis(client)
    client.close()


def two_accounts() -> Settings:
    """The worker's own account is `default`; the fleet has two others, whose limits for MODEL differ from the
    catalogue's and from each other: acct-a 2 at once + 2 queued upstream (4 slots), acct-b 3 + none (3 slots)."""
    return Settings(
        account="default",
        accounts=(
            AccountSettings(name="acct-a", api_keys=(SecretStr("k-a"),), limits={MODEL: (5, 2)}),
            AccountSettings(name="acct-b", api_keys=(SecretStr("k-b"),), limits={MODEL: (5, 3)}, server_queue_depth=0),
        ),
    )


def scrape(store: JobStore, quota: Quota, limits: SlotLimits) -> Samples:
    """Metric name -> label values -> value, as the collector serves them at NOW."""
    collector = StoreStateCollector(store.gauges, quota.slots_held, limits, clock=lambda: NOW)
    return {family.name: {tuple(s.labels.values()): s.value for s in family.samples} for family in collector.collect()}


def hold(quota: Quota, account: str, model: str, count: int, *, limit: int, lease_s: float = LEASE_S) -> None:
    for i in range(count):
        ref = f"b/{account}-{model}-{i}-{lease_s}"
        assert quota.take_slot(Scope(account, model), ref, limit=limit, lease_s=lease_s, now=NOW - 1)


def test_utilisation_is_slots_held_over_each_scopes_own_limit_under_its_own_account(
    fleet: tuple[JobStore, Quota],
) -> None:
    """With two accounts configured (from the Celery config the worker is given), each scope reports the slots its
    live leases hold, its own limit (the account's overrides, not the catalogue) and their ratio, under its own
    account: never the worker's `GENQ_ACCOUNT`, and a lapsed lease is not counted."""
    store, quota = fleet
    limits = celery_config(two_accounts())["genq_metrics"]["slot_limits"]
    hold(quota, "acct-a", MODEL, 2, limit=4)
    hold(quota, "acct-a", MODEL, 1, limit=4, lease_s=0.5)  # its lease lapsed before NOW
    hold(quota, "acct-b", MODEL, 3, limit=3)
    hold(quota, "acct-a", OTHER, 1, limit=4)

    served = scrape(store, quota, limits)

    assert served["genq_slot_limit"][("acct-a", MODEL)] == 4 and served["genq_slot_limit"][("acct-b", MODEL)] == 3
    assert (
        served["genq_upstream_tasks"][("acct-a", MODEL)] == 2 and served["genq_upstream_tasks"][("acct-b", MODEL)] == 3
    )
    utilisation = served["genq_slot_utilisation"]
    assert utilisation[("acct-a", MODEL)] == 0.5 and utilisation[("acct-b", MODEL)] == 1.0
    assert utilisation[("acct-a", OTHER)] == 1 / 4  # the catalogue's 2 at once + 2 queued: the account's default
    assert {account for account, _ in utilisation} == {"acct-a", "acct-b"}
    assert sum(utilisation.values()) == 0.5 + 1.0 + 0.25  # every other scope served, at zero


def test_utilisation_is_above_one_only_when_a_scope_really_holds_more_than_its_limit(
    fleet: tuple[JobStore, Quota],
) -> None:
    """A full scope is at exactly 1; a job whose lease lapsed and that takes its slot back on top of the full
    scope (its task is upstream whatever the limit) makes it 4/3: reported as it is, not clamped."""
    store, quota = fleet
    limits = {"acct-b": {MODEL: 3}}
    hold(quota, "acct-b", MODEL, 3, limit=3)
    assert scrape(store, quota, limits)["genq_slot_utilisation"][("acct-b", MODEL)] == 1.0
    quota.keep_slot(Scope("acct-b", MODEL), "b/late", lease_s=LEASE_S, now=NOW - 1)
    assert scrape(store, quota, limits)["genq_slot_utilisation"][("acct-b", MODEL)] == pytest.approx(4 / 3)


def test_every_configured_account_is_reported_paused_or_not_and_any_other_paused_one_too(
    fleet: tuple[JobStore, Quota],
) -> None:
    """`genq_account_paused` lists both configured accounts (0 while running), and an account paused that the
    configuration no longer names; the worker's own `account` setting, not configured, is not reported."""
    store, quota = fleet
    limits = celery_config(two_accounts())["genq_metrics"]["slot_limits"]
    assert scrape(store, quota, limits)["genq_account_paused"] == {("acct-a",): 0.0, ("acct-b",): 0.0}
    account_pause.pause(store, "acct-b", code="Arrearage", message="unpaid", now=NOW)
    account_pause.pause(store, "retired", code="InvalidApiKey", message="gone", now=NOW)
    assert scrape(store, quota, limits)["genq_account_paused"] == {
        ("acct-a",): 0.0,
        ("acct-b",): 1.0,
        ("retired",): 1.0,
    }


def test_preset_serves_every_scope_at_zero_before_anything_happened() -> None:
    """After `preset`, the billed-units and throttle counters and the latency histograms of a scope exist at zero,
    so that `rate()` sees their first increment."""
    metrics.preset([("acct-preset", MODEL)])
    scope = {"account": "acct-preset", "model": MODEL}
    assert REGISTRY.get_sample_value("genq_billed_units_total", scope) == 0.0
    assert REGISTRY.get_sample_value("genq_throttled_total", {**scope, "endpoint": "query"}) == 0.0
    assert REGISTRY.get_sample_value("genq_upstream_run_seconds_count", scope) == 0.0
    assert REGISTRY.get_sample_value("genq_job_status_total", {"status": "succeeded"}) is not None
