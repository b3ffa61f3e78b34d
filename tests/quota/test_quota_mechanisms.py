"""The four quota mechanisms, one body per behaviour, run against the Redis and the in-memory implementation."""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Iterator

import pytest
import redis

from config.accounts import ScopeLimits
from workers.quota.cooldown import FACTOR_FLOOR, MemoryCooldowns, RedisCooldowns
from workers.quota.quota import Quota, Scope


@pytest.fixture(params=["redis", "memory"])
def quota(request: pytest.FixtureRequest) -> Iterator[Quota]:
    if request.param == "memory":
        yield Quota.memory()
        return
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url, decode_responses=True)
    yield Quota.redis(client)
    client.close()


def key() -> str:
    return "genq:test:" + secrets.token_hex(4)


# --- submit rate ------------------------------------------------------------------------------------
def test_rate_spaces_requests_one_interval_apart(quota: Quota) -> None:
    """At 5/s with burst 1 the first request goes, the next waits 0.2 s, and goes once 0.2 s have passed."""
    k = key()
    assert quota.rate.take(k, 5.0, 100.0) == 0.0
    assert quota.rate.take(k, 5.0, 100.0) == pytest.approx(0.2)
    assert quota.rate.take(k, 5.0, 100.1) == pytest.approx(0.1)
    assert quota.rate.take(k, 5.0, 100.2) == 0.0


def test_rate_never_allows_more_than_the_rate_in_any_second(quota: Quota) -> None:
    """Requests tried every 10 ms for 3 s: at most 5 pass in any one-second window, 15 or 16 in all."""
    k, passed = key(), []
    for i in range(300):
        now = 200.0 + i * 0.01
        if quota.rate.take(k, 5.0, now) == 0.0:
            passed.append(now)
    assert len(passed) in (15, 16)
    assert max(sum(1 for t in passed if start <= t < start + 1.0) for start in passed) <= 5


def test_rate_burst_lets_that_many_go_at_once(quota: Quota) -> None:
    """With burst 3, three requests go at the same instant and the fourth waits."""
    k = key()
    assert [quota.rate.take(k, 2.0, 10.0, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert quota.rate.take(k, 2.0, 10.0, burst=3) > 0


def test_rate_rejects_a_nonsense_rate(quota: Quota) -> None:
    """A zero rate is a configuration error, named as such."""
    with pytest.raises(ValueError, match="rate must be > 0"):
        quota.rate.take(key(), 0.0, 1.0)


# --- slots ------------------------------------------------------------------------------------------
def test_slots_never_admit_more_than_the_limit(quota: Quota) -> None:
    """Three holders fit a limit of three; a fourth is refused until one releases."""
    k = key()
    assert all(quota.slots.acquire(k, f"j{i}", limit=3, lease_until=1000.0, now=0.0) for i in range(3))
    assert not quota.slots.acquire(k, "j3", limit=3, lease_until=1000.0, now=0.0)
    assert quota.slots.release(k, "j1")
    assert quota.slots.acquire(k, "j3", limit=3, lease_until=1000.0, now=0.0)
    assert quota.slots.holders(k, 0.0) == ["j0", "j2", "j3"]


def test_slots_acquire_is_idempotent_for_a_holder(quota: Quota) -> None:
    """A holder asking again keeps its one slot (and a renewed lease); it does not take a second."""
    k = key()
    assert quota.slots.acquire(k, "j0", limit=1, lease_until=10.0, now=0.0)
    assert quota.slots.acquire(k, "j0", limit=1, lease_until=50.0, now=0.0)
    assert quota.slots.holders(k, 40.0) == ["j0"]


def test_a_lapsed_lease_frees_its_slot_and_renewal_keeps_it(quota: Quota) -> None:
    """j0 renews its lease and keeps its slot; j1 does not, lapses, and its slot goes to j2."""
    k = key()
    quota.slots.acquire(k, "j0", limit=2, lease_until=10.0, now=0.0)
    quota.slots.acquire(k, "j1", limit=2, lease_until=10.0, now=0.0)
    assert quota.slots.renew(k, "j0", lease_until=30.0)
    assert not quota.slots.acquire(k, "j2", limit=2, lease_until=40.0, now=9.0)
    assert quota.slots.acquire(k, "j2", limit=2, lease_until=40.0, now=11.0)
    assert quota.slots.holders(k, 11.0) == ["j0", "j2"]
    assert not quota.slots.renew(k, "j1", lease_until=50.0)
    assert not quota.slots.release(k, "j1")


def test_slots_hold_under_concurrent_acquires(quota: Quota) -> None:
    """Eight threads race 40 holders for 5 slots: exactly 5 win."""
    k, won = key(), []
    lock = threading.Lock()

    def contend(base: int) -> None:
        for i in range(5):
            if quota.slots.acquire(k, f"t{base}-{i}", limit=5, lease_until=100.0, now=1.0):
                with lock:
                    won.append(f"t{base}-{i}")

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 5 and sorted(won) == quota.slots.holders(k, 1.0)


def test_slots_held_counts_the_live_leases_of_each_scope_at_once(quota: Quota) -> None:
    """Per scope, the count of holders whose lease runs at `now` (a lapsed one and a released one not counted),
    in the order asked; a scope nobody used holds 0."""
    a, b, unused = Scope("acct-a", "m"), Scope("acct-b", "m"), Scope("acct-c", "m")
    for ref in ("j0", "j1", "j2"):
        quota.take_slot(a, f"{a}-{ref}", limit=5, lease_s=100.0, now=0.0)
    quota.take_slot(a, "lapses", limit=5, lease_s=5.0, now=0.0)
    quota.take_slot(b, "b0", limit=5, lease_s=100.0, now=0.0)
    quota.take_slot(b, "b1", limit=5, lease_s=100.0, now=0.0)
    quota.release_slot(b, "b1")
    assert quota.slots_held([b, a, unused], now=10.0) == {a: 3, b: 1, unused: 0}
    assert list(quota.slots_held([b, a, unused], now=10.0)) == [b, a, unused]


# --- query budget -----------------------------------------------------------------------------------
def test_query_budget_is_shared_by_every_caller_of_an_account(quota: Quota) -> None:
    """Two pollers of one account draw on one budget of at most 18 queries per second (20 QPS less the safety
    margin; tries on a 10 ms grid get 17); another account has its own."""
    account, other = key(), key()
    granted = 0
    for i in range(200):  # two pollers, each trying every 10 ms for one second
        granted += quota.budget.take(account, 20.0, 50.0 + (i // 2) * 0.01) == 0.0
    assert granted in (17, 18)
    assert quota.budget.take(other, 20.0, 50.5) == 0.0


# --- cooldown and AIMD ------------------------------------------------------------------------------
def test_a_429_pauses_the_scope_for_everyone_with_bounded_jitter(quota: Quota) -> None:
    """After a 429 every caller sees the pause (1-1.5 s at first), then the scope is open again."""
    k = key()
    state = quota.cooldowns.trip(k, 100.0, base_s=1.0, cap_s=30.0, stretch=1.3)
    assert state.wait_s == pytest.approx(1.3)
    assert quota.cooldowns.state(k, 100.5).wait_s == pytest.approx(0.8)
    assert quota.cooldowns.state(k, 101.4).wait_s == 0.0


def test_repeated_429s_halve_the_factor_once_per_second_down_to_the_floor(quota: Quota) -> None:
    """Many 429s within one second halve the rate once; later ones halve it again, never below the floor,
    and the pause doubles per strike up to its cap."""
    k = key()
    for _ in range(5):
        state = quota.cooldowns.trip(k, 10.0, base_s=1.0, cap_s=4.0, stretch=1.0)
    assert state.factor == 0.5
    for second in range(1, 12):
        state = quota.cooldowns.trip(k, 10.0 + second, base_s=1.0, cap_s=4.0, stretch=1.0)
    assert state.factor == FACTOR_FLOOR
    assert state.wait_s == pytest.approx(4.0)


def test_successes_raise_the_factor_additively_back_to_one(quota: Quota) -> None:
    """After one halving, successes outside the pause add 0.1 per second until the factor is 1 again."""
    k = key()
    quota.cooldowns.trip(k, 0.0, base_s=1.0, cap_s=30.0, stretch=1.0)
    assert quota.cooldowns.succeeded(k, 0.5, step=0.1) == 0.5  # still paused: no increase
    factors = [quota.cooldowns.succeeded(k, 1.0 + s * 0.5, step=0.1) for s in range(12)]
    assert factors[0] == pytest.approx(0.6) and factors[1] == pytest.approx(0.6)  # once per second
    assert factors[-1] == 1.0


def test_submit_wait_combines_rate_pause_and_factor(quota: Quota) -> None:
    """The facade answers 0 when the rate allows, the pause (plus jitter, never zero) after a 429, and a
    halved rate after it."""
    from config.accounts import ScopeLimits
    from config.settings import Settings
    from workers.quota.quota import Scope

    scope, rng = Scope("acct" + secrets.token_hex(3), "wan2.5-t2i-preview"), random.Random(1)
    limits = ScopeLimits(submit_rate_per_s=5, max_concurrent=5, server_queue_depth=0)
    settings = Settings(submit_rate_safety=1.0)
    assert quota.submit_wait_s(scope, limits, settings, 0.0, rng) == 0.0
    wait = quota.throttled(scope, settings, 0.1, rng)
    assert 1.0 < wait < 1.8
    assert quota.submit_wait_s(scope, limits, settings, 0.2, rng) > 0.8
    assert quota.submit_wait_s(scope, limits, settings, 2.0, rng) == 0.0
    assert 0.4 - 0.05 <= quota.submit_wait_s(scope, limits, settings, 2.0, rng) <= 0.4 + 0.2 / 2.5


def test_stretch_outside_its_bounds_is_refused() -> None:
    """Jitter is bounded: a stretch of 1.5 or more is a programming error in both implementations."""
    client = redis.Redis()  # never contacted: the check comes first
    for cooldowns in (MemoryCooldowns(), RedisCooldowns(client)):
        with pytest.raises(ValueError, match="stretch"):
            cooldowns.trip("k", 0.0, base_s=1.0, cap_s=2.0, stretch=1.5)


# --- slot count without a queue upstream ------------------------------------------------------------------
def scope_limits(concurrent: int, depth: int) -> ScopeLimits:
    return ScopeLimits(submit_rate_per_s=5.0, max_concurrent=concurrent, server_queue_depth=depth)


def test_a_throttle_429_halves_the_slots_but_never_below_what_is_upstream(quota: Quota) -> None:
    """Told 10 where 5 run: a 429 with 5 upstream cuts straight to 5; a 429 with 1 upstream (a rate 429) to half, not
    to 1; a second cut within the second changes nothing; the count grows back one slot per probe interval."""
    scope, ten = Scope("acct-" + secrets.token_hex(3), "m"), scope_limits(10, 0)
    assert quota.slot_limit(scope, 10, 60.0, 100.0) == 10
    assert quota.concurrency_refused(scope, ten, 5, 60.0, 100.0) == 5
    assert quota.concurrency_refused(scope, ten, 0, 60.0, 100.5) == 5  # the same burst of 429s: once a second
    other, five = Scope("acct-" + secrets.token_hex(3), "m"), scope_limits(5, 0)
    assert quota.concurrency_refused(other, five, 1, 60.0, 100.0) == 3
    assert quota.concurrency_refused(other, five, 1, 60.0, 101.5) == 2
    assert quota.slot_limit(other, 5, 60.0, 101.5 + 59) == 2
    assert quota.slot_limit(other, 5, 60.0, 101.5 + 61) == 3
    assert quota.slot_limit(other, 5, 60.0, 101.5 + 400) == 5
