"""How long a model's tasks run (and wait in the service's queue), learned per (account, model) by the fleet.

What genq observes on every task that ends: the service's own `scheduled_time` to `end_time` (the run) and
`submit_time` to `scheduled_time` (the wait in its queue). Each is kept as a sample in Redis, shared by every
worker, the newest `SAMPLES_KEPT` per scope. The estimate is a log-normal fitted robustly (the weighted median
and the median absolute deviation of the logs, so one task stuck for ten minutes moves nothing) with weights
that halve every `HALF_LIFE_S` (a slower afternoon is learned within minutes). Until enough is known the
documented advice is the prior ("images take 10 s to 2 min", "videos 1 to 5 min"): it is blended in as
`PRIOR_WEIGHT` samples' worth, fading to nothing once `ENOUGH_SAMPLES` are known, so a handful of tasks seen count
for more than the pages.

`estimate` is a pure function of the samples and the time; the stores only keep samples.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

import redis

from config.catalogue import Kind
from workers.jobstore import keys

#: Samples kept per scope and kind of time: enough for a stable median, small enough to read on every poll.
SAMPLES_KEPT = 64
#: A sample's weight halves every this many seconds.
HALF_LIFE_S = 600.0
#: The prior counts as this many fresh samples, while fewer than `ENOUGH_SAMPLES` are known.
PRIOR_WEIGHT = 2.0
ENOUGH_SAMPLES = 5.0
#: The spread never falls below this (log-space): durations measured to the millisecond are not that exact.
SIGMA_FLOOR = 0.05
#: Samples live this long in Redis without a new one.
SAMPLES_TTL_S = 7 * 86400
#: A process reads a scope's samples again after this long.
CACHE_S = 2.0

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Duration:
    """A log-normal distribution of seconds: `median_s`, the spread `sigma` of the logs, and how many samples'
    worth of evidence it rests on (`PRIOR_WEIGHT` alone: the prior)."""

    median_s: float
    sigma: float
    weight: float = PRIOR_WEIGHT

    @property
    def learned(self) -> bool:
        return self.weight > PRIOR_WEIGHT + 0.5

    def cdf(self, seconds: float) -> float:
        if seconds <= 0:
            return 0.0
        return _NORMAL.cdf((math.log(seconds) - math.log(self.median_s)) / self.sigma)

    def quantile(self, p: float) -> float:
        p = min(max(p, 1e-9), 1 - 1e-9)
        return self.median_s * math.exp(self.sigma * _NORMAL.inv_cdf(p))

    def survival(self, seconds: float) -> float:
        """P(T > seconds), computed on the tail's own side, so that it stays exact where the CDF rounds to 1."""
        if seconds <= 0:
            return 1.0
        z = (math.log(seconds) - math.log(self.median_s)) / self.sigma
        return 0.5 * math.erfc(z / math.sqrt(2))

    def conditional_quantile(self, elapsed_s: float, p: float) -> float:
        """The time by which a task that has run `elapsed_s` has ended with probability `p`: where the survival
        has fallen to `(1 - p)` of what it is now. Far in the tail (beyond what a float can tell) it is infinite:
        nothing known says when such a task ends, and the caller's cap decides."""
        left = self.survival(elapsed_s) * (1 - p)
        if not left > 0:
            return math.inf
        return max(elapsed_s, self.median_s * math.exp(-self.sigma * _NORMAL.inv_cdf(min(left, 1 - 1e-12))))


#: The documented advice: images "10 s to 2 min" (the pages also say "typically 1-2 minutes"), videos 1-5 min.
PRIORS = {Kind.IMAGE: Duration(median_s=30.0, sigma=0.8), Kind.VIDEO: Duration(median_s=150.0, sigma=0.6)}
#: The queue's prior: no wait known (a scope that queues is learned within a few tasks).
QUEUE_PRIOR = Duration(median_s=1.0, sigma=1.0)


@dataclass(frozen=True)
class Sample:
    at: float  # when it was observed (epoch seconds)
    seconds: float


def estimate(samples: Sequence[Sample], prior: Duration, now: float) -> Duration:
    """The log-normal the samples support, blended with `prior`; robust to outliers and to old samples."""
    # A wait of 0 s (a free slot) is real: counted as the shortest time the service's timestamps can tell.
    # A sample must say when it was seen (not in the future, beyond a clock's disagreement) to decay.
    usable = [
        (s.at, math.log(max(s.seconds, 0.05)))
        for s in samples
        if math.isfinite(s.seconds) and s.seconds >= 0 and math.isfinite(s.at) and s.at <= now + 60
    ]
    weighted = [(log_s, 0.5 ** (max(0.0, now - at) / HALF_LIFE_S)) for at, log_s in usable]
    total = sum(w for _, w in weighted)
    if total <= 1e-6:
        return prior
    centre = _weighted_median(weighted)
    spread = 1.4826 * _weighted_median([(abs(v - centre), w) for v, w in weighted])
    # The prior fades out as evidence comes in: gone once `ENOUGH_SAMPLES` fresh samples are known.
    prior_weight = PRIOR_WEIGHT * max(0.0, 1.0 - total / ENOUGH_SAMPLES)
    blended_centre = (total * centre + prior_weight * math.log(prior.median_s)) / (total + prior_weight)
    blended_var = (total * spread**2 + prior_weight * prior.sigma**2) / (total + prior_weight)
    return Duration(math.exp(blended_centre), max(SIGMA_FLOOR, math.sqrt(blended_var)), total + PRIOR_WEIGHT)


def _weighted_median(values: Sequence[tuple[float, float]]) -> float:
    ordered = sorted(values)
    half, running = sum(w for _, w in ordered) / 2, 0.0
    for value, weight in ordered:
        running += weight
        if running >= half:
            return value
    return ordered[-1][0]


@dataclass(frozen=True)
class Learned:
    """What is known of a scope's tasks: how long they run, and how long they wait in the service's queue."""

    run: Duration
    queue: Duration


class Durations(Protocol):
    def record(self, account: str, model: str, *, run_s: float | None, queue_s: float | None, now: float) -> None:
        """Keep what one ended task took."""

    def learned(self, account: str, model: str, kind: Kind, now: float) -> Learned:
        """The scope's estimates at `now`."""


def _parse(entry: str) -> Sample | None:
    at, _, seconds = entry.partition(":")
    try:
        return Sample(float(at), float(seconds))
    except ValueError:
        return None


class RedisDurations:
    """The fleet's samples: one capped list per scope and kind of time, read at most every `CACHE_S` per process."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._cache: dict[tuple[str, str], tuple[float, Learned]] = {}

    def record(self, account: str, model: str, *, run_s: float | None, queue_s: float | None, now: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for what, seconds in (("run", run_s), ("queue", queue_s)):
            if seconds is None or not math.isfinite(seconds) or seconds < 0:
                continue
            key = keys.durations(account, model, what)
            pipe.lpush(key, f"{now!r}:{seconds!r}")
            pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
            pipe.expire(key, SAMPLES_TTL_S)
        pipe.execute()
        self._cache.pop((account, model), None)

    def learned(self, account: str, model: str, kind: Kind, now: float) -> Learned:
        cached = self._cache.get((account, model))
        if cached is not None and 0 <= now - cached[0] < CACHE_S:
            return cached[1]
        pipe = self._redis.pipeline(transaction=False)
        for what in ("run", "queue"):
            pipe.lrange(keys.durations(account, model, what), 0, SAMPLES_KEPT - 1)
        run_entries, queue_entries = pipe.execute()
        learned = Learned(
            run=estimate(_samples(run_entries), PRIORS[kind], now),
            queue=estimate(_samples(queue_entries), QUEUE_PRIOR, now),
        )
        self._cache[(account, model)] = (now, learned)
        return learned


def _samples(entries: Sequence[str | bytes]) -> list[Sample]:
    parsed = (_parse(e.decode() if isinstance(e, bytes) else e) for e in entries)
    return [s for s in parsed if s is not None]


class MemoryDurations:
    """The same for one process (tests, and a single-process embedding)."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str, str], deque[Sample]] = {}
        self._lock = threading.Lock()

    def record(self, account: str, model: str, *, run_s: float | None, queue_s: float | None, now: float) -> None:
        with self._lock:
            for what, seconds in (("run", run_s), ("queue", queue_s)):
                if seconds is not None and math.isfinite(seconds) and seconds >= 0:
                    kept = self._samples.setdefault((account, model, what), deque(maxlen=SAMPLES_KEPT))
                    kept.appendleft(Sample(now, seconds))

    def learned(self, account: str, model: str, kind: Kind, now: float) -> Learned:
        with self._lock:
            run = list(self._samples.get((account, model, "run"), ()))
            queue = list(self._samples.get((account, model, "queue"), ()))
        return Learned(run=estimate(run, PRIORS[kind], now), queue=estimate(queue, QUEUE_PRIOR, now))
