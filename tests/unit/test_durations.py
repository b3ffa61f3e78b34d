"""Learned task durations: a robust, decaying log-normal fit, blended with the documented prior."""

from __future__ import annotations

import math
import random

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from config.catalogue import Kind
from workers.quota.durations import (
    HALF_LIFE_S,
    PRIORS,
    QUEUE_PRIOR,
    SAMPLES_KEPT,
    Duration,
    MemoryDurations,
    RedisDurations,
    Sample,
    estimate,
)

NOW = 1_800_000_000.0
PRIOR = PRIORS[Kind.IMAGE]


def lognormal(median_s: float, sigma: float, count: int, seed: int = 1, at: float = NOW) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(at, rng.lognormvariate(math.log(median_s), sigma)) for _ in range(count)]


def test_nothing_seen_is_the_prior() -> None:
    """With no samples the estimate is the documented prior, and says it learned nothing."""
    assert estimate([], PRIOR, NOW) == PRIOR
    assert not estimate([], PRIOR, NOW).learned


def test_fifty_tasks_are_learned_within_a_few_percent() -> None:
    """Fifty runs of ~20 s (sigma 0.3) give a median within 10 % and a sigma within 0.1 of the truth."""
    learned = estimate(lognormal(20.0, 0.3, 50), PRIOR, NOW)
    assert learned.learned
    assert learned.median_s == pytest.approx(20.0, rel=0.1)
    assert learned.sigma == pytest.approx(0.3, abs=0.1)


def test_outliers_do_not_move_the_estimate() -> None:
    """Three tasks stuck for ten minutes among forty of ~20 s barely move the median or the spread."""
    clean = estimate(lognormal(20.0, 0.3, 40), PRIOR, NOW)
    stuck = estimate([*lognormal(20.0, 0.3, 40), *(Sample(NOW, 600.0) for _ in range(3))], PRIOR, NOW)
    assert stuck.median_s == pytest.approx(clean.median_s, rel=0.1)
    assert stuck.sigma < clean.sigma + 0.1


def test_a_slower_day_is_learned_within_minutes() -> None:
    """Forty runs of 10 s an hour ago, then twenty of 30 s in the last five minutes: the estimate is the new 30 s."""
    old = lognormal(10.0, 0.2, 40, at=NOW - 3600)
    new = [Sample(NOW - 300 + i * 15, s.seconds) for i, s in enumerate(lognormal(30.0, 0.2, 20, seed=2))]
    assert estimate([*old, *new], PRIOR, NOW).median_s == pytest.approx(30.0, rel=0.15)
    assert HALF_LIFE_S <= 900  # "within minutes" rests on this


def test_waits_of_zero_seconds_are_learned_as_no_queue() -> None:
    """A scope whose tasks start at once learns a queue time near zero (a wait of 0 s is a sample, not noise)."""
    learned = estimate([Sample(NOW, 0.0) for _ in range(20)], QUEUE_PRIOR, NOW)
    assert learned.learned and learned.quantile(0.9) < 0.5


@given(st.lists(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True, allow_infinity=True)), max_size=80))
def test_any_samples_give_a_usable_distribution(raw: list[tuple[float, float]]) -> None:
    """Whatever the samples (NaN, negative, huge, from the future), the estimate is finite and positive."""
    learned = estimate([Sample(at, s) for at, s in raw], PRIOR, NOW)
    assert math.isfinite(learned.median_s) and learned.median_s > 0
    assert math.isfinite(learned.sigma) and learned.sigma > 0
    assert 0 < learned.quantile(0.5) < math.inf


def test_far_in_the_tail_the_next_quarter_of_ends_is_still_ahead() -> None:
    """At 6 and 10 sigma into the tail (where the CDF rounds to 1) the time of the next quarter of ends is still
    strictly ahead, and beyond what a float can tell it is infinite (the caller's cap decides), never `now`."""
    run = Duration(20.0, 0.3)
    for elapsed in (20.0 * math.exp(0.3 * 6), 20.0 * math.exp(0.3 * 10)):
        assert run.cdf(elapsed) == pytest.approx(1.0)
        assert run.conditional_quantile(elapsed, 0.25) > elapsed * 1.005
    assert run.conditional_quantile(1e9, 0.25) == math.inf
    assert run.conditional_quantile(0.0, 0.25) == pytest.approx(run.quantile(0.25))


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_stores_keep_the_newest_samples_per_scope(store: str, request: pytest.FixtureRequest) -> None:
    """Both stores keep at most SAMPLES_KEPT runs per scope, apart from other scopes, and learn from them."""
    if store == "redis":
        durations: MemoryDurations | RedisDurations = RedisDurations(
            redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
        )
    else:
        durations = MemoryDurations()
    for i, sample in enumerate(lognormal(20.0, 0.3, SAMPLES_KEPT + 20)):
        durations.record("acct", "m1", run_s=sample.seconds, queue_s=0.0, now=NOW + i)
    durations.record("acct", "m2", run_s=500.0, queue_s=None, now=NOW)
    learned = durations.learned("acct", "m1", Kind.IMAGE, NOW + 100)
    assert learned.run.median_s == pytest.approx(20.0, rel=0.15)
    assert learned.run.weight <= SAMPLES_KEPT + PRIOR.weight
    assert learned.queue.quantile(0.9) < 0.5
    assert durations.learned("acct", "m2", Kind.IMAGE, NOW + 100).run.median_s > PRIOR.median_s * 2
